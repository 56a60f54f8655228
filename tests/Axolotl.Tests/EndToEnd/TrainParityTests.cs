using System.Text.Json.Nodes;
using Axolotl.IO;

namespace Axolotl.Tests.EndToEnd;

/// <summary>
/// `axolotl train` against transformers + PEFT: the same model, adapter and batch give the same 20 losses (training.json),
/// and what we save is PEFT's layout.
/// </summary>
public class TrainParityTests
{
    static readonly JsonNode Training = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "training.json")))!;

    /// <summary>step3_batch.json as pre-tokenized rows (labels = input_ids), the form Axolotl takes with no `type`.</summary>
    static string WriteBatch(TempDir dir)
    {
        var batch = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "step3_batch.json")))!["input_ids"]!.AsArray();
        var lines = batch.Select(row =>
        {
            var ids = row!.AsArray().Select(x => (int)x!).ToArray();
            return new JsonObject
            {
                ["input_ids"] = new JsonArray(ids.Select(i => (JsonNode)i).ToArray()),
                ["attention_mask"] = new JsonArray(ids.Select(_ => (JsonNode)1).ToArray()),
                ["labels"] = new JsonArray(ids.Select(i => (JsonNode)i).ToArray()),
            }.ToJsonString();
        });
        File.WriteAllLines(dir["batch.jsonl"], lines);
        return dir["batch.jsonl"];
    }

    static string Config(TempDir dir, string adapterLines, string model = "tiny-llama") => $"""
        base_model: {TestSetup.Data("reference", "models", model)}
        datasets:
          - path: {WriteBatch(dir)}
            ds_type: json
        sequence_len: 64
        {adapterLines}
        micro_batch_size: 4
        gradient_accumulation_steps: 1
        num_epochs: 20
        learning_rate: 0.001
        optimizer: adamw_torch
        lr_scheduler: constant
        warmup_steps: 0
        weight_decay: 0.0
        max_grad_norm: 0
        logging_steps: 1
        bf16: false
        val_set_size: 0
        sample_packing: false
        output_dir: {dir["out"]}
        """;

    static double[] LoggedLosses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    static void AssertLosses(string run, double[] actual)
    {
        var expected = Training["runs"]![run]!["losses"]!.AsArray().Select(x => (double)x!).ToArray();
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) < 1e-5, $"step {i + 1}: loss {actual[i]} vs transformers {expected[i]}");
    }

    /// <summary>tiny-qwen2-randbias has random q/k/v biases: its trajectory covers the bias path of forward and backward.</summary>
    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    public void Lora_from_peft_init_adapter_matches_peft_trajectory_and_saves_peft_layout(string model)
    {
        using var dir = TestSetup.TempDir();
        var init = TestSetup.Data("reference", "adapters", $"{model}-lora-init");
        File.WriteAllText(dir["config.yml"], Config(dir, $"adapter: lora\nlora_model_dir: {init}", model));

        Assert.Equal(0, Cli.Cli.Run(["train", dir["config.yml"]]));

        AssertLosses($"{model}/lora", LoggedLosses(dir["out"]));
        var saved = SafetensorsFile.Open(Path.Combine(dir["out"], "adapter_model.safetensors"));
        var reference = SafetensorsFile.Open(TestSetup.Data("reference", "adapters", $"{model}-lora-step20", "adapter_model.safetensors"));
        Assert.Equal(reference.Entries.Keys.Order(), saved.Entries.Keys.Order());
        foreach (var key in reference.Entries.Keys)
            Assert.Equal(reference.Entries[key].Shape, saved.Entries[key].Shape);
        Assert.Equal("pt", saved.Metadata["format"]);
        // After 20 AdamW steps the adapter is PEFT's step-20 adapter up to fp32 noise.
        using var scope = TorchSharp.torch.NewDisposeScope();
        foreach (var key in reference.Entries.Keys)
        {
            var diff = (saved.Read(key) - reference.Read(key)).abs().max().item<float>();
            Assert.True(diff < 1e-4, $"{key}: max diff {diff}");
        }
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], "adapter_config.json")))!;
        Assert.Equal("LORA", (string)config["peft_type"]!);
        Assert.Equal(8, (int)config["r"]!);
        Assert.Equal(16, (double)config["lora_alpha"]!);
        Assert.Equal("CAUSAL_LM", (string)config["task_type"]!);
    }

    [Fact]
    public void Full_finetune_matches_transformers_trajectory()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["config.yml"], Config(dir, ""));

        Assert.Equal(0, Cli.Cli.Run(["train", dir["config.yml"]]));

        AssertLosses("tiny-llama/full", LoggedLosses(dir["out"]));
        var saved = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        var original = SafetensorsFile.Open(TestSetup.Data("reference", "models", "tiny-llama", "model.safetensors"));
        Assert.Equal(original.Entries.Keys.Order(), saved.Entries.Keys.Order());
        Assert.True(File.Exists(Path.Combine(dir["out"], "config.json")));
    }
}
