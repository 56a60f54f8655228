using System.Text.Json.Nodes;
using Axolotl.IO;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>
/// <see cref="FirstPrinciplesReference"/> is the only oracle for Qwen3, Gemma 2, Phi-3 and the RoPE scalings, so it is
/// itself proven here against Hugging Face: on the models transformers ran (shared/reference), and on the checkpoint
/// conventions of the folders the project saves for it (key names, shapes, the fused q|k|v and gate|up layouts).
/// </summary>
public class FirstPrinciplesReferenceTests
{
    static readonly string References = TestSetup.Data("reference");

    static void AssertClose(Tensor expected, Tensor actual, double tolerance, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double diff = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(diff < tolerance, $"{what}: max |difference| = {diff}");
    }

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")] // random q/k/v biases
    public void It_gives_the_transformers_logits_of_the_reference_models(string model)
    {
        using var scope = NewDisposeScope();
        var recorded = SafetensorsFile.Open(Path.Combine(References, $"step1_logits_{model}.safetensors"));
        var ids = recorded.Read("input_ids").to(ScalarType.Int64).flatten().data<long>().ToArray();
        AssertClose(recorded.Read("logits"), FirstPrinciplesReference.Logits(Path.Combine(References, "models", model), ids), 1e-4, model);
    }

    /// <summary>
    /// The window mask the reference applies to Phi-3 and Gemma 2 (position i sees keys i - window &lt; j &lt;= i, as
    /// current transformers does) against transformers 4.40's recorded Mistral, whose window of 6 let i see i - 6 .. i:
    /// seven keys, the current rule's window of 7. The input (12 tokens) is longer than either window.
    /// </summary>
    [Fact]
    public void Its_window_mask_gives_the_transformers_logits_of_mistral()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var family = Path.Combine(References, "families", "mistral");
        var model = Directory.CreateDirectory(dir["mistral"]).FullName;
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(family, "model", "config.json")))!.AsObject();
        Assert.Equal(6, (int)config["sliding_window"]!);
        config["sliding_window"] = 7;
        File.WriteAllText(Path.Combine(model, "config.json"), config.ToJsonString());
        File.Copy(Path.Combine(family, "model", "model.safetensors"), Path.Combine(model, "model.safetensors"));
        var ids = new long[] { 1, 5, 9, 200, 17, 3, 88, 400, 33, 7, 250, 11 }; // families/README: the input of logits.safetensors
        var logits = SafetensorsFile.Open(Path.Combine(family, "logits.safetensors")).Read("logits");
        AssertClose(logits, FirstPrinciplesReference.Logits(model, ids), 1e-4, "mistral");
    }

    /// <summary>
    /// transformers' Phi-3 is Llama with two fused projections: qkv_proj's rows are q (heads x head_dim), then k, then v
    /// (kv_heads x head_dim each), and gate_up_proj's rows are gate, then up (Phi3Attention slices at
    /// num_heads * head_dim; Phi3MLP chunks in two). tiny-llama fused that way must give transformers' Llama logits, in
    /// the reference decoder and in the project's loader alike.
    /// </summary>
    [Fact]
    public void A_llama_fused_by_transformers_phi3_layout_keeps_its_transformers_logits()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var llama = Path.Combine(References, "models", "tiny-llama");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(llama, "config.json")))!.AsObject();
        config["model_type"] = "phi3";
        config["architectures"] = new JsonArray("Phi3ForCausalLM");
        var phi3 = Directory.CreateDirectory(dir["phi3"]).FullName;
        File.WriteAllText(Path.Combine(phi3, "config.json"), config.ToJsonString());
        var source = SafetensorsFile.Open(Path.Combine(llama, "model.safetensors"));
        var fused = new Dictionary<string, Tensor>();
        foreach (var key in source.Entries.Keys)
        {
            if (key.Contains(".self_attn.q_proj."))
            {
                var at = key.Replace("q_proj.weight", "");
                fused[at + "qkv_proj.weight"] = cat([source.Read(at + "q_proj.weight"), source.Read(at + "k_proj.weight"), source.Read(at + "v_proj.weight")], 0);
            }
            else if (key.Contains(".mlp.gate_proj."))
            {
                var at = key.Replace("gate_proj.weight", "");
                fused[at + "gate_up_proj.weight"] = cat([source.Read(at + "gate_proj.weight"), source.Read(at + "up_proj.weight")], 0);
            }
            else if (!key.Contains(".self_attn.k_proj.") && !key.Contains(".self_attn.v_proj.") && !key.Contains(".mlp.up_proj."))
                fused[key] = source.Read(key);
        }
        SafetensorsFile.Write(Path.Combine(phi3, "model.safetensors"), fused, new Dictionary<string, string> { ["format"] = "pt" });

        var recorded = SafetensorsFile.Open(Path.Combine(References, "step1_logits_tiny-llama.safetensors"));
        var ids = recorded.Read("input_ids").to(ScalarType.Int64).flatten().data<long>().ToArray();
        var expected = recorded.Read("logits");
        AssertClose(expected, FirstPrinciplesReference.Logits(phi3, ids), 1e-4, "reference decoder on the fused folder");
        var model = CausalLM.FromPretrained(phi3, ScalarType.Float32, ScalarType.Float32);
        Assert.True(model.Config.FusedProjections);
        using var _ = no_grad();
        AssertClose(expected, model.forward(tensor(ids).unsqueeze(0)), 1e-4, "the project's Phi-3 on the fused folder");
    }

    /// <summary>
    /// The tensors a folder saved by the project holds, which the reference decoder reads by name: every key and shape
    /// transformers' modeling file for the family would load (written out here from those files), and nothing else.
    /// </summary>
    [Theory]
    [InlineData("qwen3")]
    [InlineData("gemma2")]
    [InlineData("phi3")]
    public void Saved_folders_use_the_transformers_key_names_and_shapes(string family)
    {
        using var dir = TestSetup.TempDir();
        var json = family switch { "qwen3" => NewFamilyTests.Qwen3(), "gemma2" => NewFamilyTests.Gemma2(), _ => NewFamilyTests.Phi3() };
        var path = NewFamilyTests.Build(dir, json);
        int vocab = (int)json["vocab_size"]!, hidden = (int)json["hidden_size"]!, inter = (int)json["intermediate_size"]!;
        int heads = (int)json["num_attention_heads"]!, kv = (int)json["num_key_value_heads"]!;
        int headDim = (int?)json["head_dim"] ?? hidden / heads;
        var expected = new Dictionary<string, long[]> { ["model.embed_tokens.weight"] = [vocab, hidden], ["model.norm.weight"] = [hidden] };
        if (!(bool)json["tie_word_embeddings"]!) expected["lm_head.weight"] = [vocab, hidden];
        for (int l = 0; l < (int)json["num_hidden_layers"]!; l++)
        {
            string p = $"model.layers.{l}.";
            expected[p + "input_layernorm.weight"] = [hidden];
            expected[p + "post_attention_layernorm.weight"] = [hidden];
            expected[p + "self_attn.o_proj.weight"] = [hidden, heads * headDim];
            expected[p + "mlp.down_proj.weight"] = [hidden, inter];
            if (family == "phi3")
            {
                expected[p + "self_attn.qkv_proj.weight"] = [(heads + 2 * kv) * headDim, hidden];
                expected[p + "mlp.gate_up_proj.weight"] = [2 * inter, hidden];
                continue;
            }
            expected[p + "self_attn.q_proj.weight"] = [heads * headDim, hidden];
            expected[p + "self_attn.k_proj.weight"] = [kv * headDim, hidden];
            expected[p + "self_attn.v_proj.weight"] = [kv * headDim, hidden];
            expected[p + "mlp.gate_proj.weight"] = [inter, hidden];
            expected[p + "mlp.up_proj.weight"] = [inter, hidden];
            if (family == "qwen3")
            {
                expected[p + "self_attn.q_norm.weight"] = [headDim];
                expected[p + "self_attn.k_norm.weight"] = [headDim];
            }
            if (family == "gemma2")
            {
                expected[p + "pre_feedforward_layernorm.weight"] = [hidden];
                expected[p + "post_feedforward_layernorm.weight"] = [hidden];
            }
        }
        var saved = SafetensorsFile.Open(Path.Combine(path, "model.safetensors")).Entries;
        Assert.Equal(expected.Keys.Order(), saved.Keys.Order());
        foreach (var (key, shape) in expected) Assert.True(shape.SequenceEqual(saved[key].Shape.Select(d => (long)d)), $"{key}: [{string.Join(", ", saved[key].Shape)}], expected [{string.Join(", ", shape)}]");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(path, "config.json")))!;
        Assert.Equal(family, (string)config["model_type"]!);
    }
}
