using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>
/// Qwen3, Gemma 2, Phi-3 and Llama's rope_scaling variants. shared/reference has no transformers output for these
/// (it was made with transformers 4.40, before Qwen3 and Gemma 2 existed), so tiny random models built here are checked
/// against <see cref="FirstPrinciplesReference"/>, a float64 decoder written independently from the equations.
/// </summary>
public class NewFamilyTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static readonly long[] Ids = [1, 5, 9, 60, 17, 3, 42, 8];

    internal static JsonObject Llama(string type = "llama") => new()
    {
        ["model_type"] = type, ["vocab_size"] = 64, ["hidden_size"] = 32, ["intermediate_size"] = 48,
        ["num_hidden_layers"] = 2, ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["rms_norm_eps"] = 1e-5,
        ["max_position_embeddings"] = 64, ["rope_theta"] = 10000.0, ["initializer_range"] = 0.2, ["tie_word_embeddings"] = false,
    };

    internal static JsonObject Qwen3()
    {
        var c = Llama("qwen3");
        c["head_dim"] = 16; // not hidden / heads (8): Qwen3 takes it from the config
        return c;
    }

    internal static JsonObject Gemma2()
    {
        var c = Llama("gemma2");
        c["num_hidden_layers"] = 3;
        c["head_dim"] = 16;
        c["query_pre_attn_scalar"] = 24;
        c["attn_logit_softcapping"] = 2.0;
        c["final_logit_softcapping"] = 3.0;
        c["sliding_window"] = 3;
        c["hidden_activation"] = "gelu_pytorch_tanh";
        c["tie_word_embeddings"] = true;
        return c;
    }

    internal static JsonObject Phi3()
    {
        var c = Llama("phi3");
        c["sliding_window"] = 4;
        return c;
    }

    /// <summary>As read from a file (numbers parsed from text, as config.json's are).</summary>
    internal static DecoderConfig FromJson(JsonObject config) =>
        DecoderConfig.FromJson(JsonNode.Parse(config.ToJsonString())!.AsObject(), "m/config.json");

    /// <summary>A random model for the config, every norm weight perturbed so that each path matters, saved as an HF folder.</summary>
    internal static string Build(TempDir dir, JsonObject config, int seed = 7)
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.Create(FromJson(config), ScalarType.Float32, ScalarType.Float32);
        model.InitializeWeights(seed);
        var generator = new Generator((ulong)seed + 1);
        using (no_grad())
            foreach (var p in model.parameters().Where(p => p.dim() == 1))
                p.add_(empty_like(p).normal_(0, 0.3, generator));
        var path = dir[$"{config["model_type"]}-{seed}"];
        model.SavePretrained(path);
        return path;
    }

    void AssertMatchesReference(string modelDir, long[] ids)
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(modelDir, ScalarType.Float32, ScalarType.Float32);
        using var _ = no_grad();
        var logits = model.forward(tensor(ids).unsqueeze(0));
        var expected = FirstPrinciplesReference.Logits(modelDir, ids).to(ScalarType.Float32);
        var diff = (logits - expected).abs().max().item<float>();
        output.WriteLine($"{Path.GetFileName(modelDir)}: max |logits - reference| = {diff}, logits std {logits.std().item<float>()}");
        Assert.True(diff < 1e-5, $"max |logits - reference| = {diff}");
    }

    [Fact]
    public void Qwen3_matches_the_first_principles_decoder()
    {
        using var dir = TestSetup.TempDir();
        var path = Build(dir, Qwen3());
        AssertMatchesReference(path, Ids);
        var config = DecoderConfig.FromFolder(path);
        Assert.Equal((16, true, false), (config.HeadDim, config.QkNorm, config.QkvBias));
        var keys = CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32).named_parameters().Select(p => p.name).ToList();
        Assert.Contains("model.layers.0.self_attn.q_norm.weight", keys);
        Assert.Contains("model.layers.1.self_attn.k_norm.weight", keys);
    }

    [Fact]
    public void Gemma2_matches_the_first_principles_decoder()
    {
        using var dir = TestSetup.TempDir();
        AssertMatchesReference(Build(dir, Gemma2()), Ids);
    }

    [Fact]
    public void Gemma2_softcaps_and_window_all_change_the_result()
    {
        // Each feature must be live: turning it off moves the logits.
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var path = Build(dir, Gemma2());
        var config = DecoderConfig.FromFolder(path);
        Assert.Equal([true, false, true], config.SlidingLayers!);
        Assert.Equal(1 / Math.Sqrt(24), config.AttentionScale, 12);
        using var _ = no_grad();
        Tensor Logits(DecoderConfig c)
        {
            var m = CausalLM.Create(c, ScalarType.Float32, ScalarType.Float32);
            m.LoadWeights(path);
            return m.forward(tensor(Ids).unsqueeze(0));
        }
        var full = Logits(config);
        foreach (var variant in new[] { config with { AttentionSoftcap = null }, config with { FinalLogitSoftcap = null },
                                        config with { SlidingWindow = null }, config with { AttentionScale = 1 / 4.0 } })
            Assert.True((Logits(variant) - full).abs().max().item<float>() > 1e-4);
        // layer_types, as newer configs spell the pattern, wins over the even/odd rule.
        var json = Gemma2();
        json["layer_types"] = new JsonArray("full_attention", "sliding_attention", "sliding_attention");
        Assert.Equal([false, true, true], FromJson(json).SlidingLayers!);
    }

    [Fact]
    public void Phi3_matches_the_first_principles_decoder_with_fused_projections()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var path = Build(dir, Phi3());
        AssertMatchesReference(path, Ids);
        var model = CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32);
        // PEFT targets Phi-3 by its fused module names, so they stay modules.
        Assert.Equal(["down_proj", "gate_up_proj", "o_proj", "qkv_proj"], Lora.LinearModuleNames(model));
        var wrapped = Lora.Apply(model, new LoraSettings { Rank = 2, Alpha = 4, TargetModules = ["qkv_proj", "gate_up_proj"] });
        Assert.Contains("model.layers.0.self_attn.qkv_proj", wrapped);
        Assert.Contains("model.layers.1.mlp.gate_up_proj", wrapped);
        using var _ = no_grad();
        // A seeded generator: the global one is shared with tests running beside this one, and the merge's rounding
        // error follows the drawn values.
        var generator = new Generator(12);
        foreach (var (_, layer) in Lora.Layers(model)) layer.lora_B.weight.normal_(0, 0.1, generator);
        var before = model.forward(tensor(Ids).unsqueeze(0));
        Lora.MergeAndUnload(model);
        float difference = (model.forward(tensor(Ids).unsqueeze(0)) - before).abs().max().item<float>();
        Assert.True(difference < 1e-5, $"merged and unmerged logits differ by {difference}");
    }

    public static TheoryData<string> Scalings => new() { "linear", "dynamic", "llama3", "yarn" };

    static JsonObject Scaled(string type)
    {
        var c = Llama();
        c["rope_theta"] = 100.0; // a small base spreads the frequencies over the few positions a test has
        c["max_position_embeddings"] = 4; // shorter than the input, so dynamic NTK rescales
        c["rope_scaling"] = type switch
        {
            "linear" => new JsonObject { ["type"] = "linear", ["factor"] = 2.0 },
            "dynamic" => new JsonObject { ["type"] = "dynamic", ["factor"] = 3.0 },
            "llama3" => new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 2.0,
                ["original_max_position_embeddings"] = 20,
            },
            _ => new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 64 },
        };
        return c;
    }

    [Theory]
    [MemberData(nameof(Scalings))]
    public void Llama_rope_scaling_matches_the_first_principles_decoder(string type)
    {
        using var dir = TestSetup.TempDir();
        var path = Build(dir, Scaled(type));
        AssertMatchesReference(path, Ids);
        // And the scaling is live: plain RoPE gives other logits.
        using var scope = NewDisposeScope();
        var config = DecoderConfig.FromFolder(path);
        var plain = CausalLM.Create(config with { RopeScaling = null }, ScalarType.Float32, ScalarType.Float32);
        plain.LoadWeights(path);
        using var _ = no_grad();
        var scaled = CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32).forward(tensor(Ids).unsqueeze(0));
        Assert.True((plain.forward(tensor(Ids).unsqueeze(0)) - scaled).abs().max().item<float>() > 1e-4);
    }

    [Fact]
    public void Llama3_frequencies_cover_all_three_bands()
    {
        // With head_dim 8 and base 100 the wavelengths are 6.3, 19.9, 62.8, 198.7: below 10 (kept), between 10 and 20
        // (smoothed), above 20 (divided by factor) for original 20, low 1, high 2.
        using var scope = NewDisposeScope();
        var config = FromJson(Scaled("llama3"));
        var (inv, factor) = RopeScaling.Frequencies(config, 8, CPU);
        var (expected, _) = FirstPrinciplesReference.InverseFrequencies(JsonNode.Parse(Scaled("llama3").ToJsonString())!.AsObject(), 8, 8);
        var plain = Enumerable.Range(0, 4).Select(i => 1 / Math.Pow(100, i / 4.0)).ToArray();
        var got = inv.data<float>().ToArray();
        Assert.Equal(1.0, factor);
        for (int i = 0; i < 4; i++) Assert.Equal(expected[i], got[i], 1e-6);
        Assert.Equal(plain[0], got[0], 1e-6);
        Assert.NotEqual(plain[1], got[1], 1e-4); // smoothed
        Assert.NotEqual(plain[1] / 8, got[1], 1e-4);
        Assert.Equal(plain[3] / 8, got[3], 1e-6);
    }

    [Fact]
    public void Phi3_longrope_switches_to_long_factors_past_the_original_length()
    {
        using var dir = TestSetup.TempDir();
        var c = Phi3();
        c.Remove("sliding_window");
        c["max_position_embeddings"] = 16;
        c["original_max_position_embeddings"] = 4;
        c["rope_scaling"] = new JsonObject
        {
            ["type"] = "longrope",
            ["short_factor"] = new JsonArray(1.0, 1.5, 2.0, 3.0),
            ["long_factor"] = new JsonArray(2.0, 4.0, 8.0, 16.0),
        };
        var path = Build(dir, c);
        AssertMatchesReference(path, Ids); // 8 tokens: long factors
        AssertMatchesReference(path, Ids[..3]); // 3 tokens: short factors
    }

    [Theory]
    [InlineData("""{"type": "ntk-by-parts", "factor": 2.0}""", "'ntk-by-parts'")]
    [InlineData("""{"rope_type": "llama3", "factor": 8.0}""", "original_max_position_embeddings")]
    [InlineData("""{"type": "linear"}""", "factor")]
    public void Bad_rope_scaling_is_a_user_error(string scaling, string named)
    {
        var c = Llama();
        c["rope_scaling"] = JsonNode.Parse(scaling);
        Assert.Contains(named, Assert.Throws<UserError>(() => FromJson(c)).Message);
    }

    [Fact]
    public void Plain_rope_type_default_is_plain_rope()
    {
        var c = Llama();
        c["rope_scaling"] = new JsonObject { ["rope_type"] = "default" };
        Assert.Null(FromJson(c).RopeScaling);
    }
}

/// <summary>Published config.json files (testdata/model-configs, see its SOURCES.md) read as their families.</summary>
public class PublishedConfigTests
{
    static JsonObject Json(string name) => JsonNode.Parse(File.ReadAllText(TestSetup.Data("model-configs", name)))!.AsObject();

    static DecoderConfig Read(string name) => DecoderConfig.FromJson(Json(name), name);

    [Fact]
    public void Llama_3_1_reads_its_llama3_rope_scaling_and_matches_the_formula_at_full_size()
    {
        var config = Read("meta-llama-3.1-8B-Instruct.json");
        Assert.Equal(("llama3", 8.0, 8192), (config.RopeScaling!.Type, config.RopeScaling.Factor, config.RopeScaling.OriginalMaxPositionEmbeddings));
        Assert.Equal(128, config.RotaryDim);
        using var scope = NewDisposeScope();
        var (inv, _) = RopeScaling.Frequencies(config, 16, CPU);
        var (expected, _) = FirstPrinciplesReference.InverseFrequencies(Json("meta-llama-3.1-8B-Instruct.json"), 128, 16);
        var got = inv.data<float>().ToArray();
        for (int i = 0; i < 64; i++) Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-6 * expected[i] + 1e-12, $"{i}: {got[i]} vs {expected[i]}");
    }

    [Fact]
    public void Llama_3_2_keeps_its_head_dim_and_tied_head()
    {
        var config = Read("meta-llama-3.2-1B-Instruct.json");
        Assert.Equal((64, true, 32.0), (config.HeadDim, config.TieWordEmbeddings, config.RopeScaling!.Factor));
    }

    [Fact]
    public void Phi_3_mini_is_fused_with_its_window()
    {
        var config = Read("phi-3-mini-4k-instruct-config.json");
        Assert.Equal((true, 2047, false, 96, 1e-5), (config.FusedProjections, config.SlidingWindow, config.SlidingWindowInclusive, config.HeadDim, config.NormEps));
        Assert.Null(config.RopeScaling); // "rope_scaling": null
    }

    [Theory]
    [InlineData("mistral-7B-instruct-v0.3.json", "mistral")]
    [InlineData("phi-2-config.json", "phi")]
    public void Other_published_configs_load(string name, string family) => Assert.Equal(family, Read(name).ModelType);

    [Fact]
    public void A_saved_model_keeps_the_eos_list_in_generation_config()
    {
        using var dir = TestSetup.TempDir();
        var json = NewFamilyTests.Llama();
        json["eos_token_id"] = new JsonArray(2, 7);
        var path = NewFamilyTests.Build(dir, json);
        Assert.Equal([2, 7], GenerationOptions.EosFromModelFolder(path));
    }
}
