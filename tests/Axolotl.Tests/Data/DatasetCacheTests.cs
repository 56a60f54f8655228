using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Types;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Recipes;

namespace Axolotl.Tests.Data;

/// <summary>The prepared-dataset cache's Arrow files: read back memory-mapped, readable by Apache.Arrow, never trusted when damaged.</summary>
public class DatasetCacheTests
{
    /// <summary>Rows of every shape the cache must keep: empty, one token, long, all masked, all trained.</summary>
    static List<Example> SampleRows(int count, int seed)
    {
        var random = new Random(seed);
        var rows = new List<Example>();
        for (int i = 0; i < count; i++)
        {
            int length = (i % 97) switch { 0 => 0, 1 => 1, 2 => 20_000, _ => random.Next(2, 700) };
            var ids = new int[length];
            var labels = new int[length];
            for (int t = 0; t < length; t++)
            {
                ids[t] = random.Next(0, 200_000);
                labels[t] = (i % 5) switch { 0 => Example.IgnoreIndex, 1 => ids[t], _ => random.Next(2) == 0 ? Example.IgnoreIndex : ids[t] };
            }
            rows.Add(new Example(ids, labels));
        }
        return rows;
    }

    [Fact]
    public void Mapped_rows_are_exactly_the_rows_written_across_several_files()
    {
        using var dir = TestSetup.TempDir();
        var rows = SampleRows(3000, seed: 7);
        // Small files, so that rows are found across file boundaries.
        var split = DatasetCache.WriteArrow(dir.Path, "train", rows, maxFileBytes: 1 << 20);
        Assert.True(split.Files.Count > 3, $"{split.Files.Count} files");
        Assert.Equal(rows.Count, split.Rows);

        using var mapped = DatasetCache.Open(dir.Path, split);
        Assert.Equal(rows.Count, mapped.Count);
        for (int i = 0; i < rows.Count; i++)
        {
            Assert.Equal(rows[i].InputIds, mapped[i].InputIds);
            Assert.Equal(rows[i].Labels, mapped[i].Labels);
            Assert.Equal(rows[i].InputIds.Length, mapped.LengthOf(i));
        }
        Assert.Equal(rows.Select(r => r.InputIds), mapped.Select(r => r.InputIds));
        Assert.Equal(rows.Sum(r => (long)r.InputIds.Length), mapped.TotalTokens);
        Assert.Equal(rows.Sum(r => (long)r.TrainableTokens), mapped.TrainableTokens);
        Assert.Throws<ArgumentOutOfRangeException>(() => mapped[rows.Count]);
    }

    [Fact]
    public void Packing_the_mapped_rows_gives_the_same_bins_as_packing_them_in_memory()
    {
        using var dir = TestSetup.TempDir();
        var rows = SampleRows(500, seed: 3).Where(r => r.InputIds.Length is > 0 and <= 1024).ToList();
        using var mapped = DatasetCache.Open(dir.Path, DatasetCache.WriteArrow(dir.Path, "train", rows));
        var order = Enumerable.Range(0, rows.Count).Reverse().ToList();
        var options = new PackingOptions { SequenceLen = 1024, MicroBatchSize = 2 };
        var inMemory = Packing.Pack(rows, order, options);
        var fromMapping = Packing.Pack(mapped, order, options);
        Assert.Equal(inMemory.Batches, fromMapping.Batches);
        Assert.Equal(inMemory.TokensUsed, fromMapping.TokensUsed);
        var a = Packing.Collate(rows, inMemory.Batches[0], options, padTokenId: 0);
        var b = Packing.Collate(mapped, fromMapping.Batches[0], options, padTokenId: 0);
        Assert.Equal(a.InputIds, b.InputIds);
        Assert.Equal(a.Labels, b.Labels);
    }

    [Fact]
    public void The_arrow_files_are_read_by_apache_arrows_own_reader()
    {
        using var dir = TestSetup.TempDir();
        var rows = SampleRows(400, seed: 11);
        var split = DatasetCache.WriteArrow(dir.Path, "train", rows);
        // A plain file stream: Apache.Arrow's copying reader, what other tools do, not our mapping.
        using var stream = File.OpenRead(Path.Combine(dir.Path, split.Files.Single().Name));
        using var reader = new ArrowStreamReader(stream);
        Assert.Equal(["input_ids", "labels"], reader.Schema.FieldsList.Select(f => f.Name));
        Assert.All(reader.Schema.FieldsList, f => Assert.Equal(ArrowTypeId.Int32, ((ListType)f.DataType).ValueDataType.TypeId));
        int row = 0;
        while (reader.ReadNextRecordBatch() is { } batch)
            using (batch)
            {
                var ids = (ListArray)batch.Column("input_ids");
                var labels = (ListArray)batch.Column("labels");
                for (int r = 0; r < batch.Length; r++, row++)
                {
                    Assert.Equal(rows[row].InputIds, ((Int32Array)ids.GetSlicedValues(r)).Values.ToArray());
                    Assert.Equal(rows[row].Labels, ((Int32Array)labels.GetSlicedValues(r)).Values.ToArray());
                }
            }
        Assert.Equal(rows.Count, row);
        // And as a dataset of pre-tokenized rows (no type), the way a prepared set is fed back in.
        var asDataset = RowReader.Read(Path.Combine(dir.Path, split.Files.Single().Name), null).SelectMany(r => new PreTokenized().Tokenize(r)).ToList();
        Assert.Equal(rows.Select(r => r.InputIds), asDataset.Select(e => e.InputIds));
        Assert.Equal(rows.Select(r => r.Labels), asDataset.Select(e => e.Labels));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    [InlineData(200)]
    [InlineData(-50_000)]
    [InlineData(-8)]
    [InlineData(-1)]
    public void A_truncated_arrow_file_is_refused_even_when_its_recorded_size_matches(int keep)
    {
        using var dir = TestSetup.TempDir();
        var split = DatasetCache.WriteArrow(dir.Path, "train", SampleRows(300, seed: 5));
        var path = Path.Combine(dir.Path, split.Files.Single().Name);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(keep >= 0 ? keep : bytes.Length + keep)]);
        // The size check would catch this first; here the structural checks alone must.
        var sized = new DatasetCache.SplitFiles { Rows = split.Rows, Files = [split.Files[0] with { Bytes = new FileInfo(path).Length }] };
        Assert.ThrowsAny<Exception>(() => DatasetCache.Open(dir.Path, sized).Dispose());
        Assert.Throws<InvalidDataException>(() => DatasetCache.Open(dir.Path, split).Dispose());
    }

    [Fact]
    public void A_cache_whose_arrow_file_was_cut_short_is_rebuilt_not_trusted()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], ["""{"instruction": "Hi", "output": "Hello."}""", """{"instruction": "Count to three.", "output": "One, two, three."}"""]);
        var config = new AxolotlConfig
        {
            BaseModel = TestSetup.Data("tok-llama2"), LearningRate = 1e-3, SequenceLen = 512, DatasetPreparedPath = dir["prepared"],
            Datasets = [new DatasetConfig { Path = dir["d.jsonl"], Type = "alpaca" }],
        };
        var built = PreprocessRecipe.Run(config, new Quiet()).Data;
        using (var cached = PreprocessRecipe.Run(config, new Quiet()).Data)
        {
            Assert.True(cached.FromCache);
            Assert.IsType<MappedExamples>(cached.Examples);
            Assert.Equal(built.Examples.Select(e => e.Labels), cached.Examples.Select(e => e.Labels));
            Assert.Equal(built.TrainableTokens, cached.TrainableTokens);
        }
        var file = Directory.GetFiles(Directory.GetDirectories(dir["prepared"]).Single(), "train-*.arrow").Single();
        using (var stream = new FileStream(file, FileMode.Open)) stream.SetLength(stream.Length - 16);
        var warnings = new Quiet();
        var rebuilt = PreprocessRecipe.Run(config, warnings).Data;
        Assert.False(rebuilt.FromCache);
        Assert.Contains(warnings.Warnings, w => w.Contains("cannot be read") && w.Contains("rebuilding"));
        Assert.Equal(built.Examples.Select(e => e.InputIds), rebuilt.Examples.Select(e => e.InputIds));
        using var again = PreprocessRecipe.Run(config, new Quiet()).Data;
        Assert.True(again.FromCache);
    }

    [Fact]
    public void Disposing_unmaps_the_files_so_they_can_be_replaced()
    {
        using var dir = TestSetup.TempDir();
        var rows = SampleRows(200, seed: 9);
        var split = DatasetCache.WriteArrow(dir.Path, "train", rows);
        var path = Path.Combine(dir.Path, split.Files.Single().Name);
        var mapped = DatasetCache.Open(dir.Path, split);
        Assert.Equal(rows[5].InputIds, mapped[5].InputIds);
        bool canSeeMappings = File.Exists("/proc/self/maps");
        if (canSeeMappings) Assert.Contains(path, File.ReadAllText("/proc/self/maps"));
        mapped.Dispose();
        if (canSeeMappings) Assert.DoesNotContain(path, File.ReadAllText("/proc/self/maps"));
        Assert.Throws<ObjectDisposedException>(() => mapped[5]);
        File.WriteAllText(path, "replaced");
        File.Delete(path);
        Assert.False(File.Exists(path));
    }

    sealed class Quiet : IRecipeReporter
    {
        public List<string> Warnings { get; } = [];
        public void Warn(string message) => Warnings.Add(message);
    }
}
