using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Tests.Reliability;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

static class PretrainingConfig
{
    /// <summary>A full fine-tune of the 512-token tiny Llama on streamed C4 text, max_steps 6, a checkpoint every 2 steps.</summary>
    public static string Yaml(string outputDir, string extra) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        tokenizer_config: {TestSetup.Data("tok-tiny512")}
        pretraining_dataset:
          - path: {TestSetup.Data("data-text", "c4_demo_head12.jsonl")}
        streaming_multipack_buffer_size: 4
        sequence_len: 64
        micro_batch_size: 2
        gradient_accumulation_steps: 2
        max_steps: 6
        learning_rate: 0.001
        warmup_steps: 1
        logging_steps: 1
        bf16: false
        save_steps: 2
        output_dir: {outputDir}
        {extra}
        """;
}

/// <summary><c>axolotl train</c> with pretraining_dataset: max_steps from a stream, and a resume that sees the same data.</summary>
[Collection(GlobalTorchRng.Name)]
public class PretrainingTrainTests
{
    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    static void Train(TempDir dir, string name, string yaml)
    {
        File.WriteAllText(dir[name], yaml);
        Assert.Equal(0, Cli.Cli.Run(["train", dir[name]]));
    }

    [Theory]
    [InlineData("pretraining_sample_concatenation: true")]
    [InlineData("sample_packing: true")]
    [InlineData("")]
    public void A_streamed_run_stops_at_max_steps_and_resumes_onto_the_same_batches(string mode)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        Train(dir, "a.yml", PretrainingConfig.Yaml(dir["a"], mode));
        var straight = Losses(dir["a"]);
        Assert.Equal(6, straight.Length);
        Assert.All(straight, l => Assert.True(double.IsFinite(l) && l > 0));
        // Each step took gradient_accumulation_steps micro-batches from the stream; the checkpoint says how far it got.
        var position = JsonFiles.ReadObject(Path.Combine(dir["a"], "checkpoint-4", PretrainingStream.PositionFile));
        Assert.Equal(8, (long)position["batches"]!);

        Train(dir, "b.yml", PretrainingConfig.Yaml(dir["b"], mode + $"\nresume_from_checkpoint: {Path.Combine(dir["a"], "checkpoint-4")}"));
        Assert.Equal(straight, Losses(dir["b"]));
        Assert.False(Directory.Exists(Path.Combine(dir["b"], "checkpoint-2")));
        var a = SafetensorsFile.Open(Path.Combine(dir["a"], "model.safetensors"));
        var b = SafetensorsFile.Open(Path.Combine(dir["b"], "model.safetensors"));
        foreach (var key in a.Entries.Keys)
            Assert.True(a.Read(key).eq(b.Read(key)).all().item<bool>(), $"{key} differs");
    }
}

[Collection(CapturedConsole.Name)]
public class PretrainingCliTests
{
    [Fact]
    public void Without_max_steps_train_exits_2_with_one_sentence_and_preprocess_says_a_stream_is_not_cached()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["no-steps.yml"], PretrainingConfig.Yaml(dir["out"], "").Replace("max_steps: 6", ""));
        InProcessCli.AssertUserError(InProcessCli.Run("train", dir["no-steps.yml"]), "max_steps must be set with pretraining_dataset");
        Assert.False(Directory.Exists(dir["out"]));

        File.WriteAllText(dir["ok.yml"], PretrainingConfig.Yaml(dir["out"], ""));
        var (code, _, stderr) = InProcessCli.Run("preprocess", dir["ok.yml"]);
        Assert.Equal(0, code);
        Assert.Contains("pretraining_dataset is streamed", stderr);
        Assert.Contains("never cached", stderr);
    }
}
