using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Recipes;
using Axolotl.Tokenization;
using Parquet.Serialization;

namespace Axolotl.Tests.Data;

/// <summary>Mixing as Axolotl does it: length handling, min_sample_len, deduplication, test_datasets, bad rows, the cache.</summary>
public class MixingTests
{
    static readonly Tokenizer Llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));

    static AxolotlConfig Config(string path, Action<AxolotlConfig>? set = null)
    {
        var c = new AxolotlConfig { BaseModel = TestSetup.Data("tok-llama2"), LearningRate = 1e-3, SequenceLen = 512, Datasets = [new DatasetConfig { Path = path, Type = "alpaca" }] };
        set?.Invoke(c);
        return c;
    }

    const string ShortRow = """{"instruction": "Hi", "output": "Hello."}""";
    const string LongRow = """{"instruction": "Write a long story about a dragon and a knight who become friends.", "output": "Once upon a time there was a dragon who lived alone in the mountains far away from everybody."}""";

    [Fact]
    public void Excess_length_strategy_drops_truncates_or_raises()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], [ShortRow, LongRow]);
        var dropped = DatasetBuilder.Build(Config(dir["d.jsonl"], c => c.SequenceLen = 60), () => Llama2);
        Assert.Equal((1, 1), (dropped.DroppedTooLong, dropped.Examples.Count));
        var truncated = DatasetBuilder.Build(Config(dir["d.jsonl"], c => { c.SequenceLen = 60; c.ExcessLengthStrategy = "truncate"; c.ShuffleMergedDatasets = false; }), () => Llama2);
        Assert.Equal((1, 2), (truncated.Truncated, truncated.Examples.Count));
        Assert.Equal(60, truncated.Examples[1].InputIds.Length);
        Assert.Equal(60, truncated.Examples[1].Labels.Length);
        var e = Assert.Throws<UserError>(() => DatasetBuilder.Build(Config(dir["d.jsonl"], c => { c.SequenceLen = 60; c.ExcessLengthStrategy = "raise"; }), () => Llama2));
        Assert.Contains("longer than sequence_len 60 (excess_length_strategy: raise)", e.Message);
    }

    [Fact]
    public void Min_sample_len_and_exact_deduplication()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], [ShortRow, LongRow, ShortRow, ShortRow]);
        var prepared = DatasetBuilder.Build(Config(dir["d.jsonl"], c => c.DatasetExactDeduplication = true), () => Llama2);
        Assert.Equal((4, 2, 2), (prepared.RowsRead, prepared.Duplicates, prepared.Examples.Count));
        int shortLength = prepared.Examples.Min(x => x.InputIds.Length);
        var filtered = DatasetBuilder.Build(Config(dir["d.jsonl"], c => c.MinSampleLen = shortLength + 1), () => Llama2);
        Assert.Equal((3, 1), (filtered.DroppedTooShort, filtered.Examples.Count));
    }

    [Fact]
    public void Test_datasets_are_the_evaluation_set()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["train.jsonl"], [ShortRow, LongRow]);
        File.WriteAllLines(dir["eval.jsonl"], [LongRow]);
        var prepared = DatasetBuilder.Build(Config(dir["train.jsonl"], c => c.TestDatasets = [new DatasetConfig { Path = dir["eval.jsonl"], Type = "alpaca" }]), () => Llama2);
        Assert.Equal(2, prepared.Examples.Count);
        Assert.Single(prepared.Eval);
        Assert.Contains("test_datasets", Assert.Throws<UserError>(() => ConfigLoader.Parse($"""
            base_model: m
            learning_rate: 0.001
            val_set_size: 0.1
            datasets:
              - path: a.jsonl
                type: alpaca
            test_datasets:
              - path: b.jsonl
                type: alpaca
            """, "cfg.yml")).Message);
    }

    [Fact]
    public void Bad_rows_fail_with_file_and_line_or_are_skipped_and_counted()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], [ShortRow, """{"instruction": "no output"}""", "{not json", """{"instruction": 5, "output": "x"}""", ShortRow, """{"output": "y"}"""]);
        var e = Assert.Throws<UserError>(() => DatasetBuilder.Build(Config(dir["d.jsonl"]), () => Llama2));
        Assert.StartsWith($"{dir["d.jsonl"]}, line 3: invalid JSON", e.Message);
        Assert.Contains("bad_rows: skip", e.Message);
        File.WriteAllLines(dir["d2.jsonl"], [ShortRow, """{"instruction": "no output"}"""]);
        Assert.StartsWith($"{dir["d2.jsonl"]}, line 2: missing field 'output'.", Assert.Throws<UserError>(() => DatasetBuilder.Build(Config(dir["d2.jsonl"]), () => Llama2)).Message);

        var prepared = DatasetBuilder.Build(Config(dir["d.jsonl"], c => c.BadRows = "skip"), () => Llama2);
        Assert.Equal(2, prepared.Examples.Count);
        Assert.Equal([("invalid JSON", 1), ("missing field", 2), ("wrong type", 1)], prepared.SkippedRows.Select(s => (s.Reason, s.Count)));
        Assert.Contains("line 2: missing field 'output'", prepared.SkippedRows[1].First);
    }

    sealed class Recorder : IRecipeReporter
    {
        public List<string> Lines { get; } = [];
        public void Info(string message) => Lines.Add("info: " + message);
        public void Warn(string message) => Lines.Add("warn: " + message);
    }

    sealed class CachedRow
    {
        [System.Text.Json.Serialization.JsonPropertyName("input_ids")] public List<int> InputIds { get; set; } = [];
        [System.Text.Json.Serialization.JsonPropertyName("labels")] public List<int> Labels { get; set; } = [];
        [System.Text.Json.Serialization.JsonPropertyName("attention_mask")] public List<int> AttentionMask { get; set; } = [];
    }

    [Fact]
    public async Task The_prepared_dataset_is_cached_as_parquet_keyed_by_its_inputs()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], [ShortRow, LongRow, ShortRow.Replace("Hi", "Hey")]);
        var config = Config(dir["d.jsonl"], c => { c.DatasetPreparedPath = dir["prepared"]; c.ValSetSize = 1; });
        var first = new Recorder();
        var built = PreprocessRecipe.Run(config, first).Data;
        Assert.Contains(first.Lines, l => l.StartsWith("info: Data: saved the prepared dataset to "));
        var folder = Directory.GetDirectories(dir["prepared"]).Single();
        await using (var s = File.OpenRead(Path.Combine(folder, "train.parquet")))
        {
            var rows = (await ParquetSerializer.DeserializeAsync<CachedRow>(s)).Data;
            Assert.Equal(built.Examples.Select(x => x.InputIds), rows.Select(r => r.InputIds.ToArray()));
            Assert.Equal(built.Examples.Select(x => x.Labels), rows.Select(r => r.Labels.ToArray()));
            Assert.All(rows, r => Assert.All(r.AttentionMask, m => Assert.Equal(1, m)));
        }

        var second = new Recorder();
        var cached = PreprocessRecipe.Run(config, second).Data;
        Assert.True(cached.FromCache);
        Assert.Contains(second.Lines, l => l.StartsWith("info: Data: loaded the prepared dataset from "));
        Assert.Equal(built.Examples.Select(x => x.InputIds), cached.Examples.Select(x => x.InputIds));
        Assert.Equal(built.Eval.Select(x => x.Labels), cached.Eval.Select(x => x.Labels));
        Assert.Equal(built.RowsRead, cached.RowsRead);

        // Anything that changes the result is a different key: here the data file and sequence_len.
        config.SequenceLen = 256;
        Assert.False(PreprocessRecipe.Run(config, new Recorder()).Data.FromCache);
        Assert.Equal(2, Directory.GetDirectories(dir["prepared"]).Length);
        config.SequenceLen = 512;
        File.AppendAllText(dir["d.jsonl"], ShortRow.Replace("Hi", "Yo") + "\n");
        Assert.False(PreprocessRecipe.Run(config, new Recorder()).Data.FromCache);

        // A corrupt cache is rebuilt with a warning, never trusted.
        var key = DatasetCache.Key(config, config.BaseModel);
        File.WriteAllText(Path.Combine(dir["prepared"], key, "train-00000-of-00001.arrow"), "garbage");
        var third = new Recorder();
        var rebuilt = PreprocessRecipe.Run(config, third).Data;
        Assert.False(rebuilt.FromCache);
        Assert.Contains(third.Lines, l => l.StartsWith("warn: the prepared dataset in ") && l.Contains("rebuilding"));
        Assert.True(PreprocessRecipe.Run(config, new Recorder()).Data.FromCache);
        // preprocess always rebuilds, as Axolotl's does
        Assert.False(PreprocessRecipe.Run(config, new Recorder(), rebuild: true).Data.FromCache);
        Assert.DoesNotContain(Directory.GetDirectories(dir["prepared"]), d => Path.GetFileName(d).StartsWith('.'));
    }

    [Fact]
    public void The_cache_key_follows_the_tokenizers_content_not_its_path()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], [ShortRow]);
        Directory.CreateDirectory(dir["tok"]);
        foreach (var f in Directory.GetFiles(TestSetup.Data("tok-llama2"))) File.Copy(f, Path.Combine(dir["tok"], Path.GetFileName(f)));
        var config = Config(dir["d.jsonl"]);
        var before = DatasetCache.Key(config, dir["tok"]);
        Assert.Equal(before, DatasetCache.Key(config, dir["tok"]));
        File.AppendAllText(Path.Combine(dir["tok"], "tokenizer_config.json"), " ");
        Assert.NotEqual(before, DatasetCache.Key(config, dir["tok"]));
    }
}
