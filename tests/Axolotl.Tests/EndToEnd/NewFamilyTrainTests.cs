using System.Text.Json.Nodes;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Tests.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>`axolotl train` on the newer families and on a sharded base, through the unchanged recipe and trainer.</summary>
public class NewFamilyTrainTests
{
    static string Config(TempDir dir, string baseModel, string methodLines)
    {
        var ids = new[] { 1, 5, 9, 60, 17, 3, 42, 8, 11, 23, 31, 2, 7, 19, 44, 50 };
        var row = new JsonObject { ["input_ids"] = new JsonArray(ids.Select(i => (JsonNode)i).ToArray()), ["labels"] = new JsonArray(ids.Select(i => (JsonNode)i).ToArray()) };
        File.WriteAllLines(dir["rows.jsonl"], [row.ToJsonString(), row.ToJsonString()]);
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {baseModel}
            datasets:
              - path: {dir["rows.jsonl"]}
                ds_type: json
            sequence_len: 32
            {methodLines}
            micro_batch_size: 2
            max_steps: 3
            learning_rate: 0.01
            lr_scheduler: constant
            max_grad_norm: 0
            logging_steps: 1
            save_strategy: "no"
            bf16: false
            output_dir: {dir["out"]}
            """);
        return dir["config.yml"];
    }

    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    [Theory]
    [InlineData("qwen3", "q_proj")]
    [InlineData("gemma2", "o_proj")]
    [InlineData("phi3", "qkv_proj")]
    public void Lora_trains_each_new_family(string family, string module)
    {
        using var dir = TestSetup.TempDir();
        var json = family switch { "qwen3" => NewFamilyTests.Qwen3(), "gemma2" => NewFamilyTests.Gemma2(), _ => NewFamilyTests.Phi3() };
        var baseModel = NewFamilyTests.Build(dir, json);
        Assert.Equal(0, Cli.Cli.Run(["train", Config(dir, baseModel, "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true")]));
        var losses = Losses(dir["out"]);
        Assert.Equal(3, losses.Length);
        Assert.True(losses[2] < losses[0], $"{family}: losses {string.Join(", ", losses)}");
        Assert.Contains($"base_model.model.model.layers.1.self_attn.{module}.lora_A.weight",
            SafetensorsFile.Open(Path.Combine(dir["out"], "adapter_model.safetensors")).Entries.Keys);
    }

    [Fact]
    public void Full_finetune_of_a_sharded_base_keeps_its_shards()
    {
        using var dir = TestSetup.TempDir();
        var baseDir = dir["base"];
        using (NewDisposeScope())
            CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32)
                .SavePretrained(baseDir, maxShardBytes: 150_000);
        Assert.Equal(0, Cli.Cli.Run(["train", Config(dir, baseDir, "")]));
        Assert.False(File.Exists(Path.Combine(dir["out"], "model.safetensors")));
        Assert.Equal(ShardedSafetensors.LayoutOf(baseDir)!.OrderBy(kv => kv.Key), ShardedSafetensors.LayoutOf(dir["out"])!.OrderBy(kv => kv.Key));
        using var scope = NewDisposeScope();
        var trained = CausalLM.FromPretrained(dir["out"], ScalarType.Float32, ScalarType.Float32);
        var original = CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32);
        Assert.True((trained.model.embed_tokens.weight - original.model.embed_tokens.weight).abs().max().item<float>() > 0);
    }
}
