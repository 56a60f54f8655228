using System.Diagnostics;
using System.Globalization;
using Axolotl.Models;
using Axolotl.Runtime;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench moe MOE_DIR DENSE_DIR [--steps N] [--rows R] [--seq S]</c>: full fine-tune training steps (forward
/// and backward of the loss, bf16 (or fp32) weights and compute, random init, the router aux loss where the MoE config asks for
/// it) of a mixture-of-experts model against a dense one, the steps alternating between the two so a busy machine
/// slows both alike. Reports per model the median wall and process-CPU seconds per step and tokens/s.
/// </summary>
public static class MoeBench
{
    const string Usage = "usage: axolotl-bench moe MOE_DIR DENSE_DIR [--steps N] [--rows R] [--seq S] [--dtype bf16|fp32]";

    public static int Run(string[] args)
    {
        var dirs = new List<string>();
        int steps = 4, rows = 4, seq = 256;
        var dtype = ScalarType.BFloat16;
        for (int i = 0; i < args.Length; i++)
        {
            int NextInt() => i + 1 < args.Length && int.TryParse(args[++i], NumberStyles.None, CultureInfo.InvariantCulture, out var v) && v >= 1
                ? v : throw new UserError($"{args[i - 1]} needs a whole number of at least 1.");
            switch (args[i])
            {
                case "--steps": steps = NextInt(); break;
                case "--rows": rows = NextInt(); break;
                case "--seq": seq = NextInt(); break;
                case "--dtype":
                    dtype = i + 1 < args.Length ? args[++i] switch { "bf16" => ScalarType.BFloat16, "fp32" => ScalarType.Float32, var v => throw new UserError($"--dtype needs bf16 or fp32, not '{v}'.") }
                        : throw new UserError("--dtype needs bf16 or fp32.");
                    break;
                case var a when a.StartsWith('-'): throw new UserError($"unknown option {a}; {Usage}");
                default: dirs.Add(args[i]); break;
            }
        }
        if (dirs.Count != 2) throw new UserError(Usage);
        TorchRuntime.EnsureLoaded();
        var models = dirs.Select(d =>
        {
            var m = CausalLM.Create(DecoderConfig.FromFolder(d), dtype, dtype);
            m.InitializeWeights(1);
            m.train();
            return (Dir: d, Model: m, Wall: new List<double>(), Cpu: new List<double>());
        }).ToList();
        foreach (var (dir, model, _, _) in models)
            Console.WriteLine($"{dir}: {model.parameters().Sum(p => p.numel()) / 1e6:F2}M parameters");
        var generator = new Generator(7);
        var process = Process.GetCurrentProcess();
        for (int step = 0; step <= steps; step++) // step 0 warms up
            foreach (var (dir, model, wall, cpu) in models)
            {
                using var scope = NewDisposeScope();
                var ids = randint(0, model.Config.VocabSize, [rows, seq], generator: generator);
                process.Refresh();
                var cpuBefore = process.TotalProcessorTime;
                var clock = Stopwatch.StartNew();
                model.LossSumBackward(ids, ids, 1.0 / (rows * (seq - 1)));
                foreach (var p in model.parameters()) p.grad = null;
                process.Refresh();
                if (step == 0) continue;
                wall.Add(clock.Elapsed.TotalSeconds);
                cpu.Add((process.TotalProcessorTime - cpuBefore).TotalSeconds);
                Console.WriteLine($"step {step} {Path.GetFileName(dir.TrimEnd('/'))}: wall {wall[^1]:F2} s, cpu {cpu[^1]:F2} s");
            }
        foreach (var (dir, model, wall, cpu) in models)
        {
            double w = Median(wall), c = Median(cpu);
            Console.WriteLine($"{dir}: median wall {w:F2} s/step ({rows * seq / w:F0} tokens/s), median process CPU {c:F2} s/step ({rows * seq / c:F0} tokens per CPU-second), torch threads {get_num_threads()}");
        }
        return 0;
    }

    static double Median(List<double> xs)
    {
        var s = xs.Order().ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }
}
