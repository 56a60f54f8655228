using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Axolotl.Distributed;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// <c>mpirun -np N axolotl-bench collectives [--max-mib M] [--out results.jsonl]</c>: the time of all-reduce,
/// reduce-scatter and all-gather over fp32 messages of 4 KiB to M MiB (default 256) through the MPI layer training
/// uses, as nccl-tests reports them: algorithm bandwidth (message bytes / time) and bus bandwidth (algbw × 2(n−1)/n for
/// all-reduce, × (n−1)/n for the others: the bytes each link carries, comparable across rank counts).
/// </summary>
public static class CollectivesBench
{
    public static int Run(string[] args)
    {
        long maxMib = 256;
        string? outPath = null;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new UserError($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--max-mib": maxMib = long.TryParse(Next(), out var m) && m > 0 ? m : throw new UserError("--max-mib needs a positive whole number."); break;
                case "--out": outPath = Next(); break;
                default: throw new UserError($"unknown argument '{args[i]}'; usage: mpirun -np N axolotl-bench collectives [--max-mib M] [--out results.jsonl]");
            }
        }
        Runtime.TorchRuntime.EnsureLoaded();
        var world = MpiLaunch.World ?? throw new UserError("the collectives benchmark runs under mpirun with 2 or more ranks: mpirun -np 2 dotnet Axolotl.Bench.dll collectives");
        int n = world.WorldSize;
        var results = new List<JsonObject>();
        if (world.Rank == 0)
            Console.WriteLine($"{world.Describe()}, {n} ranks, {Environment.ProcessorCount} cores\n{"bytes",12} {"op",15} {"time (us)",10} {"algbw GB/s",11} {"busbw GB/s",11}");
        for (long bytes = 4096; bytes <= maxMib << 20; bytes *= 4)
        {
            long elements = bytes / 4 / n * n;
            int repetitions = (int)Math.Clamp((64L << 20) / bytes, 3, 200);
            using var scope = NewDisposeScope();
            var full = ones(elements, dtype: ScalarType.Float32);
            var block = empty(elements / n, dtype: ScalarType.Float32);
            foreach (var (op, factor, action) in new (string, double, Action)[]
            {
                ("all-reduce", 2.0 * (n - 1) / n, () => world.AllReduceSum(full)),
                ("reduce-scatter", (n - 1.0) / n, () => world.ReduceScatterSum(full, block)),
                ("all-gather", (n - 1.0) / n, () => world.AllGather(full)),
            })
            {
                action(); // warm-up: connections, registration
                var times = new List<double>();
                for (int r = 0; r < repetitions; r++)
                {
                    world.Barrier();
                    var clock = Stopwatch.StartNew();
                    action();
                    // The slowest rank decides when a collective is done.
                    times.Add(world.AllReduceMax(clock.Elapsed.Ticks) / (double)TimeSpan.TicksPerSecond);
                }
                double seconds = Stats.Median(times), algbw = elements * 4.0 / seconds / 1e9;
                if (world.Rank != 0) continue;
                Console.WriteLine($"{elements * 4,12} {op,15} {seconds * 1e6,10:F1} {algbw,11:F2} {algbw * factor,11:F2}");
                results.Add(new JsonObject
                {
                    ["benchmark"] = "collectives", ["op"] = op, ["ranks"] = n, ["bytes"] = elements * 4,
                    ["seconds_median"] = seconds, ["algbw_gbps"] = Math.Round(algbw, 3), ["busbw_gbps"] = Math.Round(algbw * factor, 3),
                    ["cores"] = Environment.ProcessorCount, ["timestamp"] = DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture),
                });
            }
        }
        if (world.Rank == 0 && outPath != null)
            File.AppendAllLines(outPath, results.Select(r => r.ToJsonString()));
        return 0;
    }
}
