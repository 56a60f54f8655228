using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.IO;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Tests.Adapters;

/// <summary>DoRA, rsLoRA, modules_to_save and layers_to_transform with PEFT 0.10's semantics and file layout.</summary>
public class PeftVariantsTests
{
    static CausalLM Model() =>
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);

    static Tensor Ids() => tensor(new long[] { 1, 5, 9, 200, 17, 3, 88, 400 }).unsqueeze(0);

    static void Perturb(nn.Module model, int seed)
    {
        using var _ = no_grad();
        var gen = new Generator((ulong)seed);
        foreach (var (_, layer) in Lora.Layers(model))
        {
            layer.lora_B.weight.normal_(0, 0.05, gen);
            layer.lora_magnitude_vector?.mul_(1 + 0.1 * randn(layer.lora_magnitude_vector.shape, generator: gen));
        }
    }

    [Fact]
    public void Dora_forward_is_magnitude_times_direction_of_the_updated_weight()
    {
        using var scope = NewDisposeScope();
        var linear = new Linear(32, 24, true, ScalarType.Float32);
        using (no_grad())
        {
            linear.weight.normal_(0, 0.2, new Generator(1));
            linear.bias!.normal_(0, 0.1, new Generator(2));
        }
        var w = linear.weight.detach().clone();
        var b = linear.bias!.detach().clone();
        var layer = new LoraLinear(linear, 4, 8, 0, useRsLora: false, useDora: true);
        // Fresh: m = ‖W‖ per output row, B = 0, so the layer is the base layer.
        Assert.True((layer.lora_magnitude_vector! - linalg.vector_norm(w, 2, [1])).abs().max().item<float>() < 1e-6);
        var x = randn(2, 3, 32, generator: new Generator(3));
        using (no_grad()) Assert.True((layer.forward(x) - (x.matmul(w.t()) + b)).abs().max().item<float>() < 1e-5);

        using (no_grad())
        {
            layer.lora_B.weight.normal_(0, 0.3, new Generator(4));
            layer.lora_magnitude_vector!.copy_(rand(24, generator: new Generator(5)) + 0.5);
        }
        var a = layer.lora_A.weight.detach();
        var bb = layer.lora_B.weight.detach();
        var m = layer.lora_magnitude_vector!.detach();
        var updated = w + 2.0 * bb.matmul(a); // scale alpha / r = 2
        var direction = updated / linalg.vector_norm(updated, 2, [1], keepdim: true);
        var expected = x.matmul((m.unsqueeze(1) * direction).t()) + b;
        var y = layer.forward(x);
        Assert.True((y - expected).abs().max().item<float>() < 1e-5);

        // The norm is detached (PEFT, DoRA §4.3): the magnitude's gradient is x·direction only.
        var g = randn(2, 3, 24, generator: new Generator(6));
        y.backward([g]);
        var magnitudeGrad = (g * x.matmul(direction.t())).sum([0, 1]);
        Assert.True((layer.lora_magnitude_vector!.grad! - magnitudeGrad).abs().max().item<float>() < 1e-4);
    }

    [Fact]
    public void Dora_adapter_saves_in_peft_layout_reloads_identically_and_merges_to_its_forward()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model();
        var settings = new LoraSettings { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"], UseDora = true };
        Lora.Apply(model, settings);
        Perturb(model, 11);
        using var _ = no_grad();
        var logits = model.forward(Ids());
        Lora.Save(model, settings, dir.Path, "tiny-llama");

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, Lora.ConfigFile)))!;
        Assert.True((bool)config["use_dora"]!);
        var keys = SafetensorsFile.Open(Path.Combine(dir.Path, Lora.WeightsFile)).Entries.Keys.ToList();
        Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", keys);
        Assert.Equal(6 * 3, keys.Count);

        var reloaded = Model();
        Assert.True(Lora.Load(reloaded, dir.Path).UseDora);
        Assert.Equal(0, (reloaded.forward(Ids()) - logits).abs().max().item<float>());
        Lora.MergeAndUnload(reloaded);
        Assert.Empty(Lora.Layers(reloaded));
        Assert.True((reloaded.forward(Ids()) - logits).abs().max().item<float>() < 1e-4);
    }

    [Fact]
    public void Rslora_scales_by_alpha_over_sqrt_r_and_round_trips()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model();
        var settings = new LoraSettings { Rank = 16, Alpha = 8, TargetModules = ["q_proj"], UseRsLora = true };
        Lora.Apply(model, settings);
        Assert.All(Lora.Layers(model), l => Assert.Equal(2.0, l.Layer.Scaling));
        Lora.Save(model, settings, dir.Path, "tiny-llama");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, Lora.ConfigFile)))!;
        Assert.True((bool)config["use_rslora"]!);
        var reloaded = Model();
        Lora.Load(reloaded, dir.Path);
        Assert.All(Lora.Layers(reloaded), l => Assert.Equal(2.0, l.Layer.Scaling));
    }

    [Fact]
    public void Modules_to_save_train_in_full_and_save_under_peft_keys()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model();
        var settings = new LoraSettings { Rank = 4, Alpha = 8, TargetModules = ["q_proj"], ModulesToSave = ["lm_head", "embed_tokens"] };
        Lora.Apply(model, settings);
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.Contains("lm_head.weight", trainable);
        Assert.Contains("model.embed_tokens.weight", trainable);
        using (no_grad())
        {
            model.lm_head!.weight.add_(0.01);
            model.model.embed_tokens.weight.mul_(1.1);
        }
        using var _ = no_grad();
        var logits = model.forward(Ids());
        Lora.Save(model, settings, dir.Path, "tiny-llama");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, Lora.ConfigFile)))!;
        Assert.Equal(["lm_head", "embed_tokens"], config["modules_to_save"]!.AsArray().Select(x => (string)x!));
        var keys = SafetensorsFile.Open(Path.Combine(dir.Path, Lora.WeightsFile)).Entries.Keys;
        Assert.Contains("base_model.model.lm_head.weight", keys);
        Assert.Contains("base_model.model.model.embed_tokens.weight", keys);

        var reloaded = Model();
        Lora.Load(reloaded, dir.Path);
        Assert.Equal(0, (reloaded.forward(Ids()) - logits).abs().max().item<float>());
    }

    [Fact]
    public void Layers_to_transform_limits_adapters_to_those_layer_indices()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model();
        var settings = new LoraSettings { Rank = 4, Alpha = 8, TargetModules = Lora.LinearModuleNames(model), LayersToTransform = [1] };
        var wrapped = Lora.Apply(model, settings);
        Assert.Equal(7, wrapped.Count);
        Assert.All(wrapped, p => Assert.StartsWith("model.layers.1.", p));
        Lora.Save(model, settings, dir.Path, "tiny-llama");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, Lora.ConfigFile)))!;
        Assert.Equal([1], config["layers_to_transform"]!.AsArray().Select(x => (int)x!));
        var reloaded = Model();
        Assert.Equal(7, Lora.Load(reloaded, dir.Path) is { } s ? Lora.Layers(reloaded).Count() : 0);
    }
}
