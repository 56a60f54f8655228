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
        // glibc's figures (arena, in use, free) read zero under jemalloc: it serves the allocations instead.
        Console.WriteLine($"allocator: {NativeAllocator.Current}");
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
        using var sampler = new PeakSampler();
        var trace = new Trace(every, sampler);
        try { FinetuneRecipe.Run(config, trace); }
        finally { try { Directory.Delete(outputDir, recursive: true); } catch (IOException) { } }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"over the run: peak RSS {sampler.RunPeakRssKb / 1024} MiB, peak native bytes in use (heap in use + mmapped chunks) {sampler.RunPeakLiveBytes >> 20} MiB"));
        var reference = trace.Samples.FirstOrDefault(s => s.Step >= 100) ?? trace.Samples.First();
        var last = trace.Samples.Last();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RSS at step {reference.Step}: {reference.RssKb / 1024} MiB; at step {last.Step}: {last.RssKb / 1024} MiB ({100.0 * (last.RssKb - reference.RssKb) / reference.RssKb:+0.0;-0.0}%); peak {Hardware.PeakRssKb() / 1024} MiB"));
        return 0;
    }

    sealed record Sample(int Step, long RssKb);

    /// <summary>
    /// Samples VmRSS and glibc's bytes in use every few milliseconds on its own thread: the peak of what is allocated
    /// (live tensors and libtorch's buffers) next to the peak RSS tells a high-water mark of the heap from live memory.
    /// </summary>
    sealed class PeakSampler : IDisposable
    {
        readonly Thread _thread;
        volatile bool _stop;
        long _intervalRssKb, _intervalLiveBytes;
        public long RunPeakRssKb, RunPeakLiveBytes;

        public PeakSampler()
        {
            // Allocation-free sampling: see QuietMemoryProbe for the TorchSharp race an allocating sampler triggers.
            _thread = new Thread(() =>
            {
                using var probe = new QuietMemoryProbe();
                while (!_stop)
                {
                    long rss = probe.ResidentBytes() / 1024;
                    long live = Hardware.HeapLiveBytes();
                    lock (this)
                    {
                        _intervalRssKb = Math.Max(_intervalRssKb, rss);
                        _intervalLiveBytes = Math.Max(_intervalLiveBytes, live);
                        RunPeakRssKb = Math.Max(RunPeakRssKb, rss);
                        RunPeakLiveBytes = Math.Max(RunPeakLiveBytes, live);
                    }
                    Thread.Sleep(10);
                }
            }) { IsBackground = true, Name = "memory sampler" };
            _thread.Start();
        }

        /// <summary>The peaks since the last call.</summary>
        public (long RssKb, long LiveBytes) TakeInterval()
        {
            lock (this)
            {
                var peaks = (_intervalRssKb, _intervalLiveBytes);
                (_intervalRssKb, _intervalLiveBytes) = (0, 0);
                return peaks;
            }
        }

        public void Dispose() { _stop = true; _thread.Join(); }
    }

    sealed class Trace(int every, PeakSampler sampler) : IRecipeReporter
    {
        public readonly List<Sample> Samples = [];
        public void Info(string message) => Console.Error.WriteLine(message);
        public void Warn(string message) => Console.Error.WriteLine("warning: " + message);
        public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed)
        {
            if (step % every != 0 && step != 1) return;
            var (peakRss, peakLive) = sampler.TakeInterval();
            long rss = Hardware.RssKb();
            Samples.Add(new Sample(step, rss));
            var heap = Hardware.HeapStats();
            long live = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"step {step,5} | {elapsed.TotalSeconds,7:F1} s | loss {loss:F4} | {tokensPerSecond,8:F0} tok/s | RSS {rss / 1024,6} MiB | heap arena {heap?.Arena >> 20,5} in use {heap?.InUse >> 20,5} free {heap?.Free >> 20,5} mmapped {heap?.Mapped >> 20,5} MiB | live tensors {live} | since last line: peak RSS {peakRss / 1024} MiB, peak in use {peakLive >> 20} MiB"));
        }
    }
}
