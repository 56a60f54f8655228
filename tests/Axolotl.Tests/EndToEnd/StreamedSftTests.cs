using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Tests.Reliability;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>
/// <c>streaming: true</c> with an SFT dataset (no pretraining_dataset): rows tokenized by the dataset's type as they
/// arrive, packed as they arrive with sample_packing, and a resume from a checkpoint that continues the stream exactly.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class StreamedSftTests
{
    /// <summary>Alpaca rows of varied lengths (about 20 to 60 tokens each with the 512-token tokenizer).</summary>
    static string WriteAlpaca(TempDir dir)
    {
        var words = "the a cat dog runs sat on mat red blue green quick slow jumps over lazy fox bird sings tree".Split(' ');
        var rng = new Random(7);
        string Text(int n) => string.Join(' ', Enumerable.Range(0, n).Select(_ => words[rng.Next(words.Length)]));
        File.WriteAllLines(dir["alpaca.jsonl"], Enumerable.Range(0, 24).Select(i => new JsonObject
        {
            ["instruction"] = Text(3 + i % 5), ["input"] = i % 3 == 0 ? Text(4) : "", ["output"] = Text(4 + i % 9),
        }.ToJsonString()));
        return dir["alpaca.jsonl"];
    }

    static string Yaml(TempDir dir, string outputDir, string extra) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        tokenizer_config: {TestSetup.Data("tok-tiny512")}
        datasets:
          - path: {WriteAlpaca(dir)}
            type: alpaca
        streaming: true
        streaming_multipack_buffer_size: 5
        sequence_len: 256
        micro_batch_size: 2
        gradient_accumulation_steps: 2
        max_steps: 6
        learning_rate: 0.001
        warmup_steps: 0
        logging_steps: 1
        bf16: false
        save_steps: 2
        output_dir: {outputDir}
        {extra}
        """;

    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    static void Train(TempDir dir, string name, string yaml)
    {
        File.WriteAllText(dir[name], yaml);
        Assert.Equal(0, Cli.Cli.Run(["train", dir[name]]));
    }

    [Theory]
    [InlineData("sample_packing: true")]
    [InlineData("")]
    public void A_streamed_sft_run_resumed_at_step_4_ends_bit_exact_with_the_uninterrupted_run(string mode)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        Train(dir, "a.yml", Yaml(dir, dir["a"], mode));
        var straight = Losses(dir["a"]);
        Assert.Equal(6, straight.Length);
        Assert.All(straight, l => Assert.True(double.IsFinite(l) && l > 0));
        // 4 steps × gradient_accumulation_steps 2 micro-batches were read from the stream when checkpoint-4 was written.
        var position = JsonFiles.ReadObject(Path.Combine(dir["a"], "checkpoint-4", PretrainingStream.PositionFile));
        Assert.Equal(8, (long)position["batches"]!);

        // The resumed run starts where checkpoint-4 stands, as a run killed after step 4 and auto-resumed would.
        Train(dir, "b.yml", Yaml(dir, dir["b"], mode + $"\nresume_from_checkpoint: {Path.Combine(dir["a"], "checkpoint-4")}"));
        Assert.Equal(straight, Losses(dir["b"]));
        var a = SafetensorsFile.Open(Path.Combine(dir["a"], "model.safetensors"));
        var b = SafetensorsFile.Open(Path.Combine(dir["b"], "model.safetensors"));
        foreach (var key in a.Entries.Keys)
            Assert.True(a.Read(key).eq(b.Read(key)).all().item<bool>(), $"{key} differs");
    }

    [Fact]
    public void The_stream_tokenizes_rows_by_the_dataset_type_with_the_prompt_masked()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Yaml(dir, dir["out"], "shuffle_merged_datasets: false"));
        var config = ConfigLoader.Load(dir["c.yml"]);
        var tokenizer = Recipes.ModelLoading.LoadTokenizer(config)!;
        var stream = PretrainingStreams.ForConfig(config, () => tokenizer, 0);
        var (first, _) = stream.Batches(StreamPosition.Start).First();
        // Rows in file order: the first two alpaca rows, each tokenized as the alpaca type does outside a stream.
        var rows = RowReader.Stream(config.Datasets[0]).Take(2).ToList();
        var strategy = PromptStrategies.For(config.Datasets[0], new StrategyContext(() => tokenizer, 256, false));
        var expected = rows.SelectMany(strategy.Tokenize).ToList();
        Assert.Equal(2, first.Rows);
        for (int r = 0; r < 2; r++)
        {
            var ids = first.InputIds.Skip(r * first.Length).Take(expected[r].InputIds.Length).Select(x => (int)x);
            var labels = first.Labels.Skip(r * first.Length).Take(expected[r].Labels.Length).Select(x => (int)x);
            Assert.Equal(expected[r].InputIds, ids);
            Assert.Equal(expected[r].Labels, labels);
            Assert.Contains(Example.IgnoreIndex, expected[r].Labels); // train_on_inputs false: the prompt is masked
        }
    }

    [Fact]
    public void Streaming_without_max_steps_is_one_sentence()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Yaml(dir, dir["out"], "").Replace("max_steps: 6", ""));
        var e = Assert.Throws<UserError>(() => ConfigLoader.Load(dir["c.yml"]));
        Assert.Contains("max_steps must be set when streaming", e.Message);
        Assert.Single(e.Message.Split('\n'));
    }
}
