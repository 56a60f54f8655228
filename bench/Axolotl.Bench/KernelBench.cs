using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Models;
using Axolotl.Runtime;
using Spectre.Console;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench kernels [--reps N] [--rows R] [--hidden H] [--intermediate I]</c>: each fused CPU kernel against the
/// TorchSharp composition it replaces, forward + backward on one layer's activations (default the 58M bench shape:
/// 4 × 256 rows, hidden 512, intermediate 1376, bf16), alternating the two N times; min and median milliseconds.
/// The step-level effect is what side-by-side.sh measures with AXOLOTL_CPU_KERNELS (0, 1, or one kernel by name).
/// </summary>
public static class KernelBench
{
    public static int Run(string[] args)
    {
        int reps = 50; long rows = 1024, hidden = 512, intermediate = 1376;
        for (int i = 0; i + 1 < args.Length; i += 2)
            switch (args[i])
            {
                case "--reps": reps = int.Parse(args[i + 1]); break;
                case "--rows": rows = long.Parse(args[i + 1]); break;
                case "--hidden": hidden = long.Parse(args[i + 1]); break;
                case "--intermediate": intermediate = long.Parse(args[i + 1]); break;
                default: throw new UserError($"unknown option {args[i]}; usage: axolotl-bench kernels [--reps N] [--rows R] [--hidden H] [--intermediate I]");
            }
        TorchRuntime.EnsureLoaded();
        var table = new Table().AddColumns("kernel", "composition ms (min / median)", "fused ms (min / median)", "speed-up (min)");
        var dtype = ScalarType.BFloat16;
        using var scope = NewDisposeScope();
        var x = randn(rows, hidden).to(dtype);
        var w = (1 + 0.1 * randn(hidden)).to(dtype);
        var gy = randn(rows, hidden).to(dtype);
        var g = randn(rows, intermediate).to(dtype);
        var u = randn(rows, intermediate).to(dtype);
        var gyMlp = randn(rows, intermediate).to(dtype);
        // Rotary: the rows as [1, rows, heads, 64] (hidden = heads × 64), one query projection's worth.
        long heads = hidden / 64;
        var q = randn(1, rows, heads, 64).to(dtype);
        var gyRope = randn(1, rows, heads, 64).to(dtype);
        var (cos, sin) = Rope.Angles(rows, 64, 10000, dtype, CPU);
        var cases = new (string Name, Func<double> Composition, Func<double> Fused)[]
        {
            ("RMSNorm fwd+bwd, weight frozen (LoRA)", () => Time(() => Norm(RmsNorm.Composition, x, w, gy, false)), () => Time(() => Norm(FusedRmsNorm.Run, x, w, gy, false))),
            ("RMSNorm fwd+bwd, weight trained (full)", () => Time(() => Norm(RmsNorm.Composition, x, w, gy, true)), () => Time(() => Norm(FusedRmsNorm.Run, x, w, gy, true))),
            ("SwiGLU fwd+bwd", () => Time(() => Glu((a, b) => nn.functional.silu(a) * b, g, u, gyMlp)), () => Time(() => Glu(FusedSwiGlu.Run, g, u, gyMlp))),
            ("RoPE fwd+bwd (one projection)", () => Time(() => Rotate(t => Rope.Apply(t.transpose(1, 2), cos, sin), q, gyRope.transpose(1, 2))),
                                              () => Time(() => Rotate(t => FusedRope.Run(t, cos, sin), q, gyRope))),
        }.ToList();
        // Decoding's one-row products (the fused side is DecodeMatmul): the 58M shape's MLP, the 1B shape's MLP and a
        // vocab-32000 head, each weight far larger than the caches at 1B, so these read at memory bandwidth.
        foreach (var (inF, outF) in new[] { (512L, 1376L), (2048L, 8192L), (8192L, 2048L), (2048L, 32000L) })
        {
            var weight = (0.02 * randn(outF, inF)).to(dtype);
            var row = randn(1, inF).to(dtype);
            cases.Add(($"decode matmul 1×{inF} · {inF}×{outF} (MB/ms = GB/s of weights: {weight.numel() * 2 / 1e6:F1} MB)",
                () => Time(() => { using var g = no_grad(); using var _ = nn.functional.linear(row, weight); }),
                () => Time(() => { using var g = no_grad(); using var _ = DecodeMatmul.Linear(row, weight, null); })));
        }
        // NF4 dequantization into bf16 (every QLoRA matmul, forward and backward; the 1B shape's MLP weight): the scalar
        // loop against the AVX2 blocks.
        var nf4 = Axolotl.Quantization.Nf4Weight.Quantize((0.02 * randn(8192, 2048)).to(dtype), doubleQuant: true);
        var nf4Out = empty(8192, 2048, dtype);
        cases.Add(("NF4 dequantize 8192×2048 to bf16 (composition: the scalar loop)",
            () => Time(() => Scalar(() => nf4.DequantizeInto(nf4Out), on => Axolotl.Quantization.Nf4Weight.ScalarOnThisThread = on)),
            () => Time(() => nf4.DequantizeInto(nf4Out))));
        var bf16Weight = (0.02 * randn(8192, 2048)).to(dtype);
        cases.Add(("NF4 quantize 8192×2048 bf16, double quantization (composition: the scalar loop)",
            () => Time(() => Scalar(() => Axolotl.Quantization.Nf4Weight.Quantize(bf16Weight, true).Dispose(), on => Axolotl.Quantization.Nf4Weight.ScalarOnThisThread = on)),
            () => Time(() => Axolotl.Quantization.Nf4Weight.Quantize(bf16Weight, true).Dispose())));
        // 8-bit AdamW's fused step over 4M fp32 parameters: its scalar loops against the AVX2 ones.
        long n = 4_000_000, blocks = (n + 255) / 256;
        var p8 = randn(n); var g8 = 0.01 * randn(n);
        Tensor[] state = [zeros(n, ScalarType.Byte), ones(blocks), zeros(n, ScalarType.Byte), ones(blocks)];
        void AdamStep() => Axolotl.Training.TrainingOptimizer.FusedAdamW8Bit.Step(p8, g8, state, 0.9, 0.999, 1e-8, 1e-4, 0.01, 5);
        cases.Add(("8-bit AdamW step, 4M fp32 parameters (composition: the scalar loops)",
            () => Time(() => Scalar(AdamStep, on => Axolotl.Training.TrainingOptimizer.FusedAdamW8Bit.ScalarOnThisThread = on)),
            () => Time(AdamStep)));
        var lines = new List<JsonObject>();
        foreach (var (name, composition, fused) in cases)
        {
            var a = new List<double>(); var b = new List<double>();
            composition(); fused();
            for (int r = 0; r < reps; r++) { a.Add(composition()); b.Add(fused()); }
            table.AddRow(name, $"{a.Min():F3} / {Stats.Median(a):F3}", $"{b.Min():F3} / {Stats.Median(b):F3}", $"{a.Min() / b.Min():F2}x");
            lines.Add(new JsonObject { ["benchmark"] = "kernel", ["kernel"] = name, ["rows"] = rows, ["composition_ms_min"] = a.Min(), ["fused_ms_min"] = b.Min(),
                                       ["composition_ms_median"] = Stats.Median(a), ["fused_ms_median"] = Stats.Median(b), ["load_average"] = SideBySideBench.LoadAverage() });
        }
        table.Caption($"{rows} rows, hidden {hidden}, intermediate {intermediate}, bf16, {get_num_threads()} torch threads, {reps} alternating repetitions, load {SideBySideBench.LoadAverage()}");
        AnsiConsole.Write(table);
        foreach (var l in lines) Console.WriteLine(l.ToJsonString());
        return 0;
    }

    /// <summary>Runs <paramref name="action"/> with a kernel's scalar-loop switch on, then off again.</summary>
    static void Scalar(Action action, Action<bool> scalarSwitch)
    {
        scalarSwitch(true);
        try { action(); }
        finally { scalarSwitch(false); }
    }

    static double Time(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        return clock.Elapsed.TotalMilliseconds;
    }

    static void Norm(Func<Tensor, Tensor, double, double, Tensor> composition, Tensor x0, Tensor w0, Tensor gy, bool weightGrad) =>
        Norm((x, w) => composition(x, w, 1e-5, 0), x0, w0, gy, weightGrad);

    static void Norm(Func<Tensor, Tensor, double, Tensor> fused, Tensor x0, Tensor w0, Tensor gy, bool weightGrad) =>
        Norm((x, w) => fused(x, w, 1e-5), x0, w0, gy, weightGrad);

    static void Norm(Func<Tensor, Tensor, Tensor> norm, Tensor x0, Tensor w0, Tensor gy, bool weightGrad)
    {
        using var scope = NewDisposeScope();
        var x = x0.detach().requires_grad_(true);
        var w = w0.detach().requires_grad_(weightGrad);
        norm(x, w).backward([gy]);
    }

    static void Rotate(Func<Tensor, Tensor> rope, Tensor q0, Tensor gy)
    {
        using var scope = NewDisposeScope();
        var q = q0.detach().requires_grad_(true);
        rope(q).backward([gy]);
    }

    static void Glu(Func<Tensor, Tensor, Tensor> glu, Tensor g0, Tensor u0, Tensor gy)
    {
        using var scope = NewDisposeScope();
        var g = g0.detach().requires_grad_(true);
        var u = u0.detach().requires_grad_(true);
        glu(g, u).backward([gy]);
    }
}
