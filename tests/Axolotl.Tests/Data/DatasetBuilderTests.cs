using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

public class DatasetBuilderTests
{
    static readonly Tokenizer Llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));

    static AxolotlConfig Config(string path, string? type, int sequenceLen = 512) => new()
    {
        BaseModel = "m", LearningRate = 1e-3, SequenceLen = sequenceLen,
        Datasets = [new DatasetConfig { Path = path, Type = type }],
    };

    [Fact]
    public void Sequences_longer_than_sequence_len_are_dropped_and_counted()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["d.jsonl"], """
            {"instruction": "Hi", "output": "Hello."}
            {"instruction": "Write a long story about a dragon and a knight who become friends.", "output": "Once upon a time there was a dragon who lived alone in the mountains far away from everybody."}
            """);
        var prepared = DatasetBuilder.Build(Config(dir["d.jsonl"], "alpaca", sequenceLen: 60), () => Llama2);
        Assert.Equal(2, prepared.RowsRead);
        Assert.Equal(1, prepared.DroppedTooLong);
        Assert.Single(prepared.Examples);
        Assert.All(prepared.Examples, e => Assert.True(e.InputIds.Length <= 60));
    }

    [Fact]
    public void Nothing_left_after_filtering_is_a_clear_error()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["d.json"], """[{"instruction": "Explain gravity in detail please", "output": "Gravity is the force by which a planet draws objects toward its centre."}]""");
        var e = Assert.Throws<UserError>(() => DatasetBuilder.Build(Config(dir["d.json"], "alpaca", sequenceLen: 16), () => Llama2));
        Assert.Contains("no training examples are left", e.Message);
        Assert.Contains("sequence_len 16", e.Message);
    }

    [Fact]
    public void Invalid_json_lines_and_empty_files_name_the_file_and_line()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["d.jsonl"], "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": oops}\n");
        Assert.Contains("d.jsonl, line 2: invalid JSON", Assert.Throws<UserError>(() => RowReader.Read(dir["d.jsonl"], null)).Message);
        File.WriteAllText(dir["empty.json"], "");
        Assert.Contains("has no rows", Assert.Throws<UserError>(() => RowReader.Read(dir["empty.json"], null)).Message);
        Assert.Contains("does not exist", Assert.Throws<UserError>(() => RowReader.Read(dir["nope.json"], null)).Message);
    }

    [Fact]
    public void Text_files_give_one_row_per_line_in_a_text_column()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["t.txt"], "first line\nsecond line\n");
        var rows = RowReader.Read(dir["t.txt"], null);
        Assert.Equal(["first line", "second line"], rows.Select(r => (string)r.Fields["text"]!));
    }

    [Fact]
    public void Shuffling_is_seeded()
    {
        var a = Enumerable.Range(0, 50).ToList();
        var b = Enumerable.Range(0, 50).ToList();
        DatasetBuilder.Shuffle(a, 42);
        DatasetBuilder.Shuffle(b, 42);
        Assert.Equal(a, b);
        Assert.NotEqual(Enumerable.Range(0, 50), a);
    }
}
