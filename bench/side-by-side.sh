#!/usr/bin/env bash
# The README's speed figures, side by side with Hugging Face on this machine, in one go (estimated 30 minutes on 2 quiet
# cores; see README "Speed, side by side"). Needs the HF reference set up as shared/hfref/README.md says, in $HFREF
# (default /work/hfref). Run on a quiet machine: every figure is labelled with the load average it was taken under.
#   bench/side-by-side.sh [results-dir]
# Writes results-dir/side-by-side.jsonl (one line per comparison), results-dir/rounds.jsonl (our own A/B rounds) and
# results-dir/log.txt, and prints a summary at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
HFREF=${HFREF:-/work/hfref}
OUT=${1:-outputs/side-by-side-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
[ -f "$HFREF/env.sh" ] || { echo "no HF reference in $HFREF (set HFREF; see shared/hfref/README.md)" >&2; exit 2; }
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; commit $(git rev-parse --short HEAD); start $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
dotnet build -c Release bench/Axolotl.Bench -v q -nologo
BENCH="dotnet bench/Axolotl.Bench/bin/Release/net10.0/axolotl-bench.dll"
START=$SECONDS

# 1. Ours against HF, alternating rounds (ours, HF, ours, HF, ours, HF), each round a fresh process.
$BENCH bench/configs/lora-58m.yml --hf-ref "$HFREF" --rounds 3 --steps 10 --warmup 2 --out "$OUT/side-by-side.jsonl"
$BENCH bench/configs/full-58m.yml --hf-ref "$HFREF" --rounds 3 --steps 10 --warmup 2 --out "$OUT/side-by-side.jsonl"
$BENCH bench/configs/lora-1b.yml --hf-ref "$HFREF" --rounds 3 --steps 4 --warmup 1 --out "$OUT/side-by-side.jsonl"

# 2. QLoRA has no CPU counterpart in HF: against our own LoRA at the same shape, alternating.
# 3. The fused CPU kernels off (AXOLOTL_CPU_KERNELS=0), all on (1) and one at a time, alternating, at the 58M shape.
round() { # label env config steps warmup
  local line
  line=$(env $2 $BENCH train-round "$3" --steps "$4" --warmup "$5" | grep '^{')
  echo "{\"label\":\"$1\",\"config\":\"$3\",\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"round\":$line}" | tee -a "$OUT/rounds.jsonl"
}
for i in 1 2; do
  round qlora-1b AXOLOTL_CPU_KERNELS=1 bench/configs/qlora-1b.yml 4 1
  round lora-1b AXOLOTL_CPU_KERNELS=1 bench/configs/lora-1b.yml 4 1
done
# Each kernel alone too (LoRA), so one that does not pay off can be dropped on the evidence.
for i in 1 2 3; do
  for kernels in 0 1 rmsnorm swiglu rope; do
    round "lora-58m kernels $kernels" AXOLOTL_CPU_KERNELS=$kernels bench/configs/lora-58m.yml 10 2
  done
  for kernels in 0 1; do
    round "full-58m kernels $kernels" AXOLOTL_CPU_KERNELS=$kernels bench/configs/full-58m.yml 10 2
  done
done

echo "took $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s; end load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
print("\n| shape | run | Axolotl.NET tokens/s (rounds) | MFU | peak RSS GiB | HF tokens/s (rounds) | HF MFU | HF peak RSS GiB | ratio (medians) | bf16 matmul peak GFLOP/s | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for l in map(json.loads, open(f"{out}/side-by-side.jsonl")):
    f = lambda xs: " / ".join(f"{x:.0f}" for x in xs)
    g = lambda xs: f"{max(xs):.2f}"
    print(f"| {l['config']} | {l['hf_mode']} vs HF {l['hf_precision']} | {f(l['ours_tokens_per_second'])} | {l['ours_mfu_median']:.1%} | {g(l['ours_peak_rss_gib'])} "
          f"| {f(l['hf_tokens_per_second'])} | {l['hf_mfu_median']:.1%} | {g(l['hf_peak_rss_gib'])} | {l['ratio_median']:.2f}x | {f(l['matmul_bf16_gflops'])} | {l['load_average']} |")
rounds = {}
for l in map(json.loads, open(f"{out}/rounds.jsonl")):
    r = l["round"]
    rounds.setdefault(l["label"], []).append((r["tokens_per_step"] / statistics.median(r["step_seconds"]), r["peak_rss_kib"] / 2**20, l["load"]))
print("\n| run | tokens/s (rounds) | peak RSS GiB | load at each round |")
print("|---|---|---|---|")
for label, rs in rounds.items():
    print(f"| {label} | {' / '.join(f'{t:.0f}' for t, _, _ in rs)} | {max(m for _, m, _ in rs):.2f} | {' ; '.join(l for _, _, l in rs)} |")
EOF
