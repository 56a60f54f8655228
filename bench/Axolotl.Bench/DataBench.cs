using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Recipes;
using Spectre.Console;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench data [--rows N] [--tokenizer DIR] [--out results.jsonl]</c>: preparing N alpaca rows (the
/// quickstart's 300 demo rows repeated, each made distinct) with the quickstart tokenizer: a cold run (read, tokenize,
/// shuffle, filter, write the Parquet cache) in rows/s and tokens/s, then the same config again, which reads the cache.
/// </summary>
public static class DataBench
{
    public static int Run(string[] args)
    {
        int rows = 100_000;
        string tokenizer = Path.Combine("examples", "models", "tiny-llama-text");
        string? outPath = null;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new UserError($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--rows": rows = int.TryParse(Next(), out var r) && r > 0 ? r : throw new UserError("--rows needs a positive whole number."); break;
                case "--tokenizer": tokenizer = Next(); break;
                case "--out": outPath = Next(); break;
                default: throw new UserError($"unknown option {args[i]}; usage: axolotl-bench data [--rows N] [--tokenizer DIR] [--out results.jsonl]");
            }
        }
        var source = Path.Combine("examples", "data", "alpaca_en_demo_300.json");
        if (!File.Exists(source)) throw new UserError($"{source} not found; run from the repository root.");
        var demo = JsonNode.Parse(File.ReadAllText(source))!.AsArray();
        var work = Directory.CreateTempSubdirectory("axolotl-databench-").FullName;
        try
        {
            var data = Path.Combine(work, "alpaca.jsonl");
            using (var w = new StreamWriter(data))
                for (int i = 0; i < rows; i++)
                {
                    var row = demo[i % demo.Count]!.DeepClone().AsObject();
                    row["instruction"] = $"{(string)row["instruction"]!} (#{i})";
                    w.WriteLine(row.ToJsonString());
                }
            var config = new AxolotlConfig
            {
                BaseModel = tokenizer, LearningRate = 1e-4, SequenceLen = 2048, DatasetPreparedPath = Path.Combine(work, "prepared"),
                Datasets = [new DatasetConfig { Path = data, Type = "alpaca" }],
            }.Resolve();
            var clock = Stopwatch.StartNew();
            var cold = PreprocessRecipe.Run(config, new Quiet()).Data;
            double coldSeconds = clock.Elapsed.TotalSeconds;
            clock.Restart();
            var warm = PreprocessRecipe.Run(config, new Quiet()).Data;
            double warmSeconds = clock.Elapsed.TotalSeconds;
            if (!warm.FromCache) throw new InvalidOperationException("the second run did not read the cache");
            long tokens = cold.TotalTokens + cold.Eval.Sum(e => (long)e.InputIds.Length);
            var table = new Table().AddColumns("benchmark", "metric", "value");
            table.AddRow("data", "rows/s (cold, cache written)", $"{rows / coldSeconds:F0} ({rows} rows in {coldSeconds:F2} s)");
            table.AddRow("data", "tokens/s (cold)", $"{tokens / coldSeconds:F0} ({tokens} tokens)");
            table.AddRow("data", "cache hit", $"{warmSeconds:F3} s");
            AnsiConsole.Write(table);
            var line = new JsonObject
            {
                ["timestamp"] = DateTimeOffset.UtcNow.ToString("o", CultureInfo.InvariantCulture), ["commit"] = Bench.GitCommit(),
                ["machine"] = new JsonObject { ["cores"] = Environment.ProcessorCount, ["cpu_model"] = Bench.CpuModel() },
                ["benchmark"] = "data_preprocess", ["rows"] = rows, ["tokens"] = tokens, ["examples"] = cold.Examples.Count,
                ["cold_seconds"] = Math.Round(coldSeconds, 3), ["rows_per_second"] = Math.Round(rows / coldSeconds),
                ["tokens_per_second"] = Math.Round(tokens / coldSeconds), ["cache_hit_seconds"] = Math.Round(warmSeconds, 4),
            }.ToJsonString();
            if (outPath != null) File.AppendAllLines(outPath, [line]); else Console.WriteLine(line);
            return 0;
        }
        finally { Directory.Delete(work, recursive: true); }
    }

    sealed class Quiet : IRecipeReporter;
}
