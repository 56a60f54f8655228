#!/usr/bin/env bash
# GPU check for a Linux x64 machine with an NVIDIA GPU and driver (CUDA 12.8 capable), the .NET 10 SDK and nuget.org
# reachable. Builds against TorchSharp-cuda-linux instead of TorchSharp-cpu, runs the GPU parity tests and the
# training-parity test against transformers (which pick the GPU through device: auto), then the issue-8 benchmarks
# (LoRA and full fine-tune of the 58M Llama) with --device cuda. Results: outputs/gpu-check/ (a log, results.jsonl,
# nvidia-smi memory samples). Run from anywhere: bench/gpu-check.sh [--steps N] [--warmup W]
#
# The CUDA packages are large (libtorch for CUDA is several GB) and replace TorchSharp-cpu in obj/: the next plain
# build restores TorchSharp-cpu again.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=10
warmup=3
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    *) echo "usage: bench/gpu-check.sh [--steps N] [--warmup W]" >&2; exit 2 ;;
  esac
done

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: nvidia-smi sees no GPU; this script is for a CUDA machine." >&2
  exit 2
fi

out=outputs/gpu-check
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
say() { echo "== $*" | tee -a "$log"; }

say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
cuda=(-p:TorchSharpPackage=TorchSharp-cuda-linux)

build() {
  say "build $1 (TorchSharp-cuda-linux)"
  if ! dotnet build "$1" -c Release "${cuda[@]}" >>"$log" 2>&1; then
    grep -E " error " "$log" | sort -u | head -5
    say "build of $1 failed; see $log"
    exit 1
  fi
}
build tests/Axolotl.Tests
build bench/Axolotl.Bench

# The CUDA parity tests skip where torch sees no GPU: if they are reported skipped here, the CUDA build did not load.
say "parity: CPU vs CUDA (CudaParityTests), and 20 training steps vs transformers + PEFT on the GPU (TrainParityTests)"
set +e
dotnet test tests/Axolotl.Tests -c Release --no-build \
  --filter "FullyQualifiedName~CudaParityTests|FullyQualifiedName~TrainParityTests|FullyQualifiedName~DeviceSelectionTests" \
  --logger "console;verbosity=normal" 2>&1 | tee -a "$log" | grep -E "Passed|Failed|Skipped|max \|cuda|error" 
tests_status=${PIPESTATUS[0]}
set -e

# Device memory as the driver sees it, sampled every second while the benchmarks run (TorchSharp has no
# torch.cuda.max_memory_allocated; the bench also reports cudaMemGetInfo's figure after each step).
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 1 >"$out/nvidia-smi-memory.csv" 2>/dev/null &
smi=$!
trap 'kill "$smi" 2>/dev/null || true' EXIT

for config in bench/configs/lora-58m.yml bench/configs/full-58m.yml; do
  say "bench $config --device cuda --steps $steps --warmup $warmup"
  dotnet bench/Axolotl.Bench/bin/Release/net10.0/axolotl-bench.dll "$config" --device cuda \
    --steps "$steps" --warmup "$warmup" --out "$out/results.jsonl" 2>&1 | tee -a "$log"
done

kill "$smi" 2>/dev/null || true
peak=$(cut -d, -f2 "$out/nvidia-smi-memory.csv" | tr -dc '0-9\n' | sort -n | tail -1)
say "peak GPU memory used (nvidia-smi, whole device): ${peak:-unknown} MiB"
say "tests exit status: $tests_status; results in $out/results.jsonl, log in $log"
exit "$tests_status"
