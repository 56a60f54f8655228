using System.Text.Json.Serialization;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Axolotl.Config;
using Axolotl.Data;
using Parquet.Serialization;

namespace Axolotl.Tests.Data;

public class LoadingTests
{
    sealed class Message
    {
        [JsonPropertyName("role")] public string Role { get; set; } = "";
        [JsonPropertyName("content")] public string Content { get; set; } = "";
    }

    sealed class ParquetRow
    {
        [JsonPropertyName("instruction")] public string Instruction { get; set; } = "";
        [JsonPropertyName("score")] public long Score { get; set; }
        [JsonPropertyName("messages")] public List<Message> Messages { get; set; } = [];
    }

    [Fact]
    public async Task Parquet_rows_keep_strings_numbers_and_lists_of_structs()
    {
        using var dir = TestSetup.TempDir();
        var rows = new[]
        {
            new ParquetRow { Instruction = "first", Score = 3, Messages = [new() { Role = "user", Content = "hi" }, new() { Role = "assistant", Content = "hello" }] },
            new ParquetRow { Instruction = "second", Score = -1, Messages = [] },
        };
        await using (var fs = File.Create(dir["d.parquet"])) await ParquetSerializer.SerializeAsync(rows, fs);
        var read = RowReader.Read(dir["d.parquet"], null);
        Assert.Equal(["first", "second"], read.Select(r => (string)r.Fields["instruction"]!));
        Assert.Equal(3L, (long)read[0].Fields["score"]!);
        Assert.Equal("assistant", (string)read[0].Fields["messages"]![1]!["role"]!);
        Assert.Equal("hello", (string)read[0].Fields["messages"]![1]!["content"]!);
        Assert.Equal(", row 2", read[1].Where[^7..]);
    }

    static void WriteArrowStream(string path, string[] texts, long[][] ids)
    {
        var offsets = new ArrowBuffer.Builder<int>();
        var values = new Int64Array.Builder();
        offsets.Append(0);
        foreach (var row in ids) { values.AppendRange(row); offsets.Append(values.Length); }
        var listType = new Apache.Arrow.Types.ListType(Apache.Arrow.Types.Int64Type.Default);
        var list = new ListArray(listType, ids.Length, offsets.Build(), values.Build(), ArrowBuffer.Empty);
        var batch = new RecordBatch.Builder()
            .Append("text", false, new StringArray.Builder().AppendRange(texts).Build())
            .Append("input_ids", false, list)
            .Build();
        using var fs = File.Create(path);
        using var writer = new ArrowStreamWriter(fs, batch.Schema);
        writer.WriteRecordBatch(batch);
        writer.WriteEnd();
    }

    [Fact]
    public void Save_to_disk_folders_read_their_arrow_files_and_pick_the_split()
    {
        using var dir = TestSetup.TempDir();
        foreach (var (split, text) in new[] { ("train", "a train row"), ("test", "a test row") })
        {
            Directory.CreateDirectory(dir[split]);
            WriteArrowStream(Path.Combine(dir[split], "data-00000-of-00001.arrow"), [text, text + " again"], [[1, 2], [3]]);
            File.WriteAllText(Path.Combine(dir[split], "state.json"), """{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}""");
        }
        File.WriteAllText(dir["dataset_dict.json"], """{"splits": ["train", "test"]}""");
        var train = RowReader.Read(new DatasetConfig { Path = dir.Path });
        Assert.Equal(["a train row", "a train row again"], train.Select(r => (string)r.Fields["text"]!));
        Assert.Equal([1L, 2L], train[0].Fields["input_ids"]!.AsArray().Select(x => (long)x!));
        Assert.Equal([3L], train[1].Fields["input_ids"]!.AsArray().Select(x => (long)x!));
        var test = RowReader.Read(new DatasetConfig { Path = dir.Path, Split = "test" });
        Assert.Equal("a test row", (string)test[0].Fields["text"]!);
        Assert.Contains("no 'validation' split", Assert.Throws<UserError>(() => RowReader.Read(new DatasetConfig { Path = dir.Path, Split = "validation" })).Message);
    }

    [Fact]
    public void Csv_follows_rfc_4180_and_types_numeric_columns_as_pandas_does()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["d.csv"], "instruction,output,n\r\n\"Say \"\"hi\"\", politely\",\"Hi,\nthere\",1\r\nplain,,2\r\n");
        var rows = RowReader.Read(dir["d.csv"], null);
        Assert.Equal("Say \"hi\", politely", (string)rows[0].Fields["instruction"]!);
        Assert.Equal("Hi,\nthere", (string)rows[0].Fields["output"]!);
        Assert.Equal(1L, (long)rows[0].Fields["n"]!);
        Assert.Null(rows[1].Fields["output"]);
        Assert.Equal("line 4", rows[1].Where.Split(", ")[^1]);
        File.WriteAllText(dir["bad.csv"], "a,b\n1,2,3\n");
        Assert.Contains("bad.csv, line 2: 3 fields where the header has 2", Assert.Throws<UserError>(() => RowReader.Read(dir["bad.csv"], null)).Message);
    }

    [Fact]
    public void Data_files_split_slices_names_and_json_fields()
    {
        using var dir = TestSetup.TempDir();
        Directory.CreateDirectory(dir["cfg"]);
        File.WriteAllText(Path.Combine(dir["cfg"], "train.jsonl"), "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n{\"text\": \"d\"}\n");
        File.WriteAllText(Path.Combine(dir["cfg"], "test.jsonl"), "{\"text\": \"t\"}\n");
        File.WriteAllText(dir["other.json"], """{"version": 1, "data": [{"text": "x"}, {"text": "y"}]}""");
        string[] Texts(DatasetConfig d) => RowReader.Read(d).Select(r => (string)r.Fields["text"]!).ToArray();
        Assert.Equal(["a", "b", "c", "d"], Texts(new() { Path = dir.Path, Name = "cfg" }));
        Assert.Equal(["t"], Texts(new() { Path = dir.Path, Name = "cfg", Split = "test" }));
        Assert.Equal(["b", "c"], Texts(new() { Path = dir["cfg"], Split = "train[1:3]" }));
        Assert.Equal(["a", "b"], Texts(new() { Path = dir["cfg"], Split = "train[:50%]" }));
        Assert.Equal(["t", "x", "y"], Texts(new() { Path = dir.Path, DataFiles = ["cfg/test.jsonl", "other.json"], Field = "data" }));
        Assert.Contains("no configuration named 'nope'", Assert.Throws<UserError>(() => RowReader.Read(new DatasetConfig { Path = dir.Path, Name = "nope" })).Message);
        Assert.Contains("only the 'train' split", Assert.Throws<UserError>(() => RowReader.Read(new DatasetConfig { Path = dir["other.json"], Split = "test" })).Message);
    }

    [Fact]
    public void Shards_partition_the_seeded_shuffle_into_contiguous_parts()
    {
        var rows = Enumerable.Range(0, 10).Select(i => new Row(new() { ["i"] = i }, "f", i + 1)).ToList();
        var parts = Enumerable.Range(0, 3).Select(k => DatasetBuilder.Shard(rows, 3, k, seed: 42)).ToList();
        Assert.Equal([4, 3, 3], parts.Select(p => p.Count));
        Assert.Equal(Enumerable.Range(0, 10), parts.SelectMany(p => p).Select(r => (int)r.Fields["i"]!).Order());
        Assert.Equal(parts[1].Select(r => r.Number), DatasetBuilder.Shard(rows, 3, 1, seed: 42).Select(r => r.Number));
    }
}
