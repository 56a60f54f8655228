using System.Text.Json.Nodes;
using Axolotl.IO;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>`axolotl train` on each family through the same recipe and trainer: nothing downstream asks which family it has.</summary>
public class FamilyTrainTests
{
    static string ModelDir(string family) => TestSetup.Data("reference", "families", family, "model");

    static string Config(TempDir dir, string family, string methodLines)
    {
        var ids = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "step3_batch.json")))!["input_ids"]![0]!
            .AsArray().Take(24).Select(x => (JsonNode)(int)x!).ToArray();
        var row = new JsonObject { ["input_ids"] = new JsonArray(ids), ["labels"] = new JsonArray(ids.Select(n => n.DeepClone()).ToArray()) };
        File.WriteAllLines(dir["rows.jsonl"], [row.ToJsonString(), row.ToJsonString()]);
        return $"""
            base_model: {ModelDir(family)}
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
            bf16: false
            output_dir: {dir["out"]}
            """;
    }

    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    [Theory]
    [InlineData("mistral", "o_proj")]
    [InlineData("gemma", "o_proj")]
    [InlineData("phi", "dense")]
    public void Lora_trains_each_family(string family, string attentionOutput)
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["config.yml"], Config(dir, family, "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true"));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["config.yml"]]));
        var losses = Losses(dir["out"]);
        Assert.Equal(3, losses.Length);
        Assert.True(losses[2] < losses[0], $"{family}: losses {string.Join(", ", losses)}");
        var keys = SafetensorsFile.Open(Path.Combine(dir["out"], "adapter_model.safetensors")).Entries.Keys;
        Assert.Contains($"base_model.model.model.layers.1.self_attn.{attentionOutput}.lora_B.weight", keys);
    }

    [Fact]
    public void Full_finetune_of_a_tied_model_saves_what_loads_back()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["config.yml"], Config(dir, "gemma", ""));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["config.yml"]]));
        var saved = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        var original = SafetensorsFile.Open(Path.Combine(ModelDir("gemma"), "model.safetensors"));
        Assert.Equal(original.Entries.Keys.Order(), saved.Entries.Keys.Order()); // no lm_head.weight: tied
        using var scope = NewDisposeScope();
        var reloaded = CausalLM.FromPretrained(dir["out"], ScalarType.Float32, ScalarType.Float32);
        Assert.True(reloaded.Config.TieWordEmbeddings);
    }

    [Fact]
    public void Model_config_turns_on_the_router_loss_and_the_saved_config_keeps_it()
    {
        using var dir = TestSetup.TempDir();
        Assert.False(DecoderConfig.FromFolder(ModelDir("mixtral")).Moe!.OutputRouterLogits);
        File.WriteAllText(dir["config.yml"], Config(dir, "mixtral", "model_config:\n  output_router_logits: true").Replace("max_steps: 3", "max_steps: 1"));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["config.yml"]]));
        var logged = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], "trainer_state.json")))!["log_history"]!.AsArray();
        Assert.Contains(logged, e => e!["aux_loss"] is not null);
        var saved = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], "config.json")))!;
        Assert.True(saved["output_router_logits"]!.GetValue<bool>());
    }

    [Fact]
    public void Random_init_gives_each_norm_its_identity()
    {
        using var scope = NewDisposeScope();
        var gemma = CausalLM.Create(DecoderConfig.FromFolder(ModelDir("gemma")), ScalarType.Float32, ScalarType.Float32);
        gemma.InitializeWeights(1);
        var phi = CausalLM.Create(DecoderConfig.FromFolder(ModelDir("phi")), ScalarType.Float32, ScalarType.Float32);
        phi.InitializeWeights(1);
        var p = phi.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        Assert.Equal(0, gemma.named_parameters().First(x => x.name == "model.norm.weight").parameter.abs().sum().item<float>()); // scales by 1 + w
        Assert.Equal(64, p["model.final_layernorm.weight"].sum().item<float>());
        Assert.Equal(0, p["model.layers.0.input_layernorm.bias"].abs().sum().item<float>());
        Assert.Equal(0, p["lm_head.bias"].abs().sum().item<float>());
        Assert.True(p["model.layers.0.mlp.fc1.weight"].std().item<float>() is > 0.015f and < 0.025f);
    }
}
