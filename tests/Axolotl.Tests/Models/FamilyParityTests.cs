using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.IO;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>Mistral, Gemma, phi, Mixtral and Qwen2-MoE through the one decoder, against transformers 4.40 (testdata/reference/families).</summary>
public class FamilyParityTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static string Dir(string family, params string[] rest) => TestSetup.Data(["reference", "families", family, .. rest]);

    static CausalLM Model(string family) => CausalLM.FromPretrained(Dir(family, "model"), ScalarType.Float32, ScalarType.Float32);

    static JsonNode Expected(string family) => JsonNode.Parse(File.ReadAllText(Dir(family, "expected.json")))!;

    static Tensor InputIds(string family) =>
        tensor(Expected(family)["input_ids"]![0]!.AsArray().Select(x => (long)x!).ToArray()).unsqueeze(0);

    [Theory]
    [InlineData("mistral")]
    [InlineData("gemma")]
    [InlineData("phi")]
    [InlineData("mixtral")]
    [InlineData("qwen2_moe")]
    public void Logits_match_transformers(string family)
    {
        using var scope = NewDisposeScope();
        var lm = Model(family);
        var expected = SafetensorsFile.Open(Dir(family, "logits.safetensors")).Read("logits");
        using var _ = no_grad();
        var logits = lm.forward(InputIds(family));
        Assert.Equal(expected.shape, logits.shape);
        var maxDiff = (logits - expected).abs().max().item<float>();
        output.WriteLine($"{family}: max |logits - reference| = {maxDiff}");
        Assert.True(maxDiff < 1e-5, $"{family}: max |logits - reference| = {maxDiff}");
        var json = Expected(family);
        var want = json["last_pos_first5"]!.AsArray().Select(x => (double)x!).ToArray();
        var got = logits[0, -1].narrow(0, 0, 5).data<float>().ToArray();
        for (int i = 0; i < 5; i++) Assert.True(Math.Abs(got[i] - want[i]) < 1e-5, $"{family} logit {i}: {got[i]} vs {want[i]}");
        Assert.True(Math.Abs(logits.to(ScalarType.Float64).sum().item<double>() - (double)json["logits_sum"]!) < 1e-3);
    }

    [Theory]
    [InlineData("mistral")]
    [InlineData("gemma")]
    [InlineData("phi")]
    [InlineData("mixtral")]
    [InlineData("qwen2_moe")]
    public void Loss_matches_transformers(string family)
    {
        using var scope = NewDisposeScope();
        var ids = InputIds(family);
        var lm = Model(family);
        using var _ = no_grad();
        var (sum, tokens) = lm.LossSum(ids, ids);
        Assert.Equal(11, tokens);
        double loss = sum.item<float>() / tokens;
        double expected = (double)Expected(family)["loss"]!;
        output.WriteLine($"{family}: loss {loss} vs {expected}");
        Assert.True(Math.Abs(loss - expected) < 1e-5, $"{family}: loss {loss} vs {expected}");
    }

    [Fact]
    public void Mistral_sliding_window_changes_the_result()
    {
        // Guards against the window being dropped silently: without it the last positions see the whole prefix.
        using var scope = NewDisposeScope();
        var config = DecoderConfig.FromFolder(Dir("mistral", "model"));
        Assert.Equal(6, config.SlidingWindow);
        var windowless = CausalLM.Create(config with { SlidingWindow = null }, ScalarType.Float32, ScalarType.Float32);
        windowless.LoadWeights(Dir("mistral", "model"));
        var expected = SafetensorsFile.Open(Dir("mistral", "logits.safetensors")).Read("logits");
        using var _ = no_grad();
        var logits = windowless.forward(InputIds("mistral"));
        Assert.True((logits - expected).abs().max().item<float>() > 1e-3);
        // HF 4.40 lets position i see i - 6 .. i (7 keys): positions 0..6 are unaffected, 7 is not.
        Assert.True((logits.narrow(1, 0, 7) - expected.narrow(1, 0, 7)).abs().max().item<float>() < 1e-5);
        Assert.True((logits.narrow(1, 7, 1) - expected.narrow(1, 7, 1)).abs().max().item<float>() > 1e-4);
    }

    [Theory]
    [InlineData("mistral", new[] { "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj" })]
    [InlineData("gemma", new[] { "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj" })]
    [InlineData("phi", new[] { "dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj" })]
    public void Lora_wraps_each_family_by_hf_names_and_round_trips(string family, string[] linearNames)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model(family);
        Assert.Equal(linearNames, Lora.LinearModuleNames(model));
        using var noGrad = no_grad();
        var baseLogits = model.forward(InputIds(family));
        var settings = new LoraSettings { Rank = 4, Alpha = 8, TargetModules = linearNames };
        var wrapped = Lora.Apply(model, settings);
        Assert.Equal(linearNames.Length * 2, wrapped.Count);
        Assert.Contains($"model.layers.1.{(family == "phi" ? "self_attn.dense" : "self_attn.o_proj")}", wrapped);
        Assert.Equal(linearNames.Length * 2, Lora.Layers(model).Count());
        Assert.All(model.named_parameters().Where(p => p.parameter.requires_grad), p => Assert.Matches(@"\.lora_[AB]\.weight$", p.name));
        // The wrapped layers are the ones forward() runs: a nonzero B moves the logits, a zero B leaves them.
        Assert.Equal(0, (model.forward(InputIds(family)) - baseLogits).abs().max().item<float>());
        foreach (var (_, layer) in Lora.Layers(model)) layer.lora_B.weight.normal_(0, 0.02);
        var adapted = model.forward(InputIds(family));
        Assert.True((adapted - baseLogits).abs().max().item<float>() > 1e-4);
        // Base weights keep their HF keys, so a merged or full save stays loadable.
        Assert.Equal(Model(family).named_parameters().Select(p => p.name).Order(), model.BaseStateDict().Select(kv => kv.Key).Order());

        Lora.Save(model, settings, dir.Path, family);
        var keys = SafetensorsFile.Open(Path.Combine(dir.Path, Lora.WeightsFile)).Entries.Keys.ToList();
        Assert.Contains($"base_model.model.model.layers.0.{(family == "phi" ? "mlp.fc1" : "mlp.up_proj")}.lora_A.weight", keys);
        var reloaded = Model(family);
        Lora.Load(reloaded, dir.Path);
        Assert.Equal(0, (reloaded.forward(InputIds(family)) - adapted).abs().max().item<float>());
    }

    [Fact]
    public void Unknown_model_type_is_a_user_error_naming_it()
    {
        using var dir = TestSetup.TempDir();
        var config = JsonNode.Parse(File.ReadAllText(Dir("mistral", "model", "config.json")))!.AsObject();
        config["model_type"] = "mamba";
        File.WriteAllText(dir["config.json"], config.ToJsonString());
        var e = Assert.Throws<UserError>(() => CausalLM.FromPretrained(dir.Path, ScalarType.Float32, ScalarType.Float32));
        Assert.Contains("'mamba'", e.Message);
        Assert.Contains("phi", e.Message); // the supported list is given
    }

    [Fact]
    public void Family_differences_are_config_data()
    {
        var gemma = DecoderConfig.FromFolder(Dir("gemma", "model"));
        Assert.True(gemma.TieWordEmbeddings); // Gemma's default when config.json does not say
        Assert.Equal((1.0, true, 16, 1, "gelu_pytorch_tanh"), (gemma.NormWeightOffset, gemma.ScaleEmbeddings, gemma.HeadDim, gemma.NumKeyValueHeads, gemma.Activation));
        var phi = DecoderConfig.FromFolder(Dir("phi", "model"));
        Assert.Equal((NormKind.Layer, 8, true, false, "gelu_new"), (phi.Norm, phi.RotaryDim, phi.ParallelBlock, phi.GatedMlp, phi.Activation));
        Assert.Equal(("dense", "fc1", "fc2", "final_layernorm"), (phi.Names.AttentionOutput, phi.Names.MlpUp, phi.Names.MlpDown, phi.Names.FinalNorm));
    }
}
