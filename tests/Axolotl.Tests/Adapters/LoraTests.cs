using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Adapters;

public class LoraTests
{
    static readonly JsonNode Logits = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "logits.json")))!;
    static readonly JsonNode Training = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "training.json")))!;

    static CausalLM Model(string name) =>
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", name), ScalarType.Float32, ScalarType.Float32);

    static Tensor InputIds() => tensor(Logits["input_ids"]![0]!.AsArray().Select(x => (long)x!).ToArray()).unsqueeze(0);

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    public void Trained_peft_adapter_gives_peft_logits(string name)
    {
        using var scope = NewDisposeScope();
        var model = Model(name);
        Lora.Load(model, TestSetup.Data("reference", "adapters", $"{name}-lora-step20"));
        using var _ = no_grad();
        var logits = model.forward(InputIds());
        var expected = Training["runs"]![$"{name}/lora"]!["eval_after_training"]!;
        var lastFirst5 = logits[0, -1].narrow(0, 0, 5).data<float>().ToArray();
        var want = expected["last_pos_first5"]!.AsArray().Select(x => (double)x!).ToArray();
        for (int i = 0; i < 5; i++) Assert.True(Math.Abs(lastFirst5[i] - want[i]) < 1e-5, $"logit {i}: {lastFirst5[i]} vs {want[i]}");
        Assert.True(Math.Abs(logits.to(ScalarType.Float64).sum().item<double>() - (double)expected["logits_sum"]!) < 1e-3);
    }

    [Fact]
    public void Fresh_adapter_leaves_the_model_unchanged_and_trains_only_lora_weights()
    {
        using var scope = NewDisposeScope();
        var model = Model("tiny-llama");
        using var before = no_grad();
        var baseLogits = model.forward(InputIds());
        var wrapped = Lora.Apply(model, new LoraSettings { Rank = 8, Alpha = 16, TargetModules = Lora.LinearModuleNames(model) });
        Assert.Equal(14, wrapped.Count); // 7 projections x 2 layers; lm_head excluded
        Assert.DoesNotContain("lm_head", wrapped);
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.Equal(28, trainable.Count);
        Assert.All(trainable, n => Assert.Matches(@"\.lora_[AB]\.weight$", n));
        Assert.Equal(18688, model.parameters().Where(p => p.requires_grad).Sum(p => p.numel())); // PEFT's count
        foreach (var (_, layer) in Lora.Layers(model))
        {
            Assert.Equal(0, layer.lora_B.weight.abs().sum().item<float>());
            // kaiming_uniform(a = sqrt 5) bounds A by 1/sqrt(fan_in).
            float bound = 1f / MathF.Sqrt(layer.lora_A.weight.shape[1]);
            Assert.True(layer.lora_A.weight.abs().max().item<float>() <= bound);
            Assert.True(layer.lora_A.weight.abs().max().item<float>() > bound / 2);
        }
        Assert.Equal(0, (model.forward(InputIds()) - baseLogits).abs().max().item<float>());
    }

    [Fact]
    public void Target_modules_that_match_nothing_are_refused_with_the_model_layer_names()
    {
        using var scope = NewDisposeScope();
        var model = Model("tiny-llama");
        var e = Assert.Throws<UserError>(() => Lora.Apply(model, new LoraSettings { Rank = 4, Alpha = 8, TargetModules = ["query_key_value"] }));
        Assert.Contains("query_key_value", e.Message);
        Assert.Contains("q_proj", e.Message);
    }

    [Fact]
    public void Save_then_load_round_trips_the_adapter()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model("tiny-llama");
        var settings = Lora.Load(model, TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20"));
        Lora.Save(model, settings, dir.Path, "tiny-llama");
        var reloaded = Model("tiny-llama");
        Lora.Load(reloaded, dir.Path);
        using var _ = no_grad();
        Assert.Equal(0, (model.forward(InputIds()) - reloaded.forward(InputIds())).abs().max().item<float>());
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "adapter_config.json")))!;
        var reference = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20", "adapter_config.json")))!;
        // Every key PEFT 0.10 writes is present, and the ones that define the adapter agree.
        Assert.Equal(reference.AsObject().Select(kv => kv.Key).Order(), config.AsObject().Select(kv => kv.Key).Order());
        foreach (var key in new[] { "r", "lora_alpha", "lora_dropout", "peft_type", "task_type", "bias", "use_rslora", "use_dora" })
            Assert.Equal(reference[key]!.ToJsonString(), config[key]!.ToJsonString());
        Assert.Equal(reference["target_modules"]!.AsArray().Select(x => (string)x!).Order(), config["target_modules"]!.AsArray().Select(x => (string)x!).Order());
    }
}
