using System.Globalization;
using Axolotl.Config;
using Axolotl.Recipes;
using Axolotl.Runtime;
using TorchSharp;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench memory config.yml [--steps N] [--every K] [--packing on|off] [--set key=value …]</c>: trains N steps
/// (no saves, no evals) and prints, every K steps, resident memory (VmRSS), glibc's heap (mallinfo2: arena, in use, free,
/// mmapped) and the tensors alive on this thread; then RSS at step 100 (or the first sample) against the last, the check
/// that memory stays flat over a long run.
/// </summary>
public static class MemoryBench
{
    const string Usage = "usage: axolotl-bench memory config.yml [--steps N] [--every K] [--packing on|off] [--set key=value ...]";

    public static int Run(string[] args)
    {
        string? configPath = null;
        int steps = 300, every = 25;
        bool? packing = null;
        var overrides = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new UserError($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--steps": steps = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--every": every = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--packing": packing = Next() == "on"; break;
                case "--set":
                    var kv = Next().Split('=', 2);
                    overrides.Add("--" + kv[0]);
                    overrides.Add(kv[1]);
                    break;
                case var a when a.StartsWith('-'): throw new UserError($"unknown option {a}; {Usage}");
                default: configPath = args[i]; break;
            }
        }
        if (configPath == null) throw new UserError(Usage);
        TorchRuntime.EnsureLoaded();
        var config = ConfigLoader.Load(configPath, overrides.ToArray());
        if (packing is bool p)
        {
            config.SamplePacking = p;
            if (p) config.PadToSequenceLen ??= true;
        }
        var outputDir = Path.Combine(Path.GetTempPath(), $"axolotl-memory-{Environment.ProcessId}");
        config.OutputDir = outputDir;
        config.MaxSteps = steps;
        config.SaveStrategy = IntervalStrategy.No;
        config.EvalStrategy = IntervalStrategy.No;
        config.LoggingSteps = Math.Max(1, every);
        var trace = new Trace(every);
        try { FinetuneRecipe.Run(config, trace); }
        finally { try { Directory.Delete(outputDir, recursive: true); } catch (IOException) { } }
        var reference = trace.Samples.FirstOrDefault(s => s.Step >= 100) ?? trace.Samples.First();
        var last = trace.Samples.Last();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RSS at step {reference.Step}: {reference.RssKb / 1024} MiB; at step {last.Step}: {last.RssKb / 1024} MiB ({100.0 * (last.RssKb - reference.RssKb) / reference.RssKb:+0.0;-0.0}%); peak {Hardware.PeakRssKb() / 1024} MiB"));
        return 0;
    }

    sealed record Sample(int Step, long RssKb);

    sealed class Trace(int every) : IRecipeReporter
    {
        public readonly List<Sample> Samples = [];
        public void Info(string message) => Console.Error.WriteLine(message);
        public void Warn(string message) => Console.Error.WriteLine("warning: " + message);
        public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed)
        {
            if (step % every != 0 && step != 1) return;
            long rss = Hardware.RssKb();
            Samples.Add(new Sample(step, rss));
            var heap = Hardware.HeapStats();
            long live = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"step {step,5} | {elapsed.TotalSeconds,7:F1} s | loss {loss:F4} | {tokensPerSecond,8:F0} tok/s | RSS {rss / 1024,6} MiB | heap arena {heap?.Arena >> 20,5} in use {heap?.InUse >> 20,5} free {heap?.Free >> 20,5} mmapped {heap?.Mapped >> 20,5} MiB | live tensors {live}"));
        }
    }
}
