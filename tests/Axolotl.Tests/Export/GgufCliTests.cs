using Axolotl.Export;
using Axolotl.Tests.Reliability;

namespace Axolotl.Tests.Export;

/// <summary><c>axolotl export-gguf</c>, <c>merge-lora --gguf</c> and GGUF base models through the CLI.</summary>
[Collection(CapturedConsole.Name)]
public class GgufCliTests
{
    static string Config(TempDir dir, string baseModel, string extra = "")
    {
        File.WriteAllText(dir["data.jsonl"], "{\"text\": \"The capital of France is Paris.\"}\n");
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {baseModel}
            datasets:
              - path: {dir["data.jsonl"]}
                type: completion
            learning_rate: 0.001
            bf16: false
            output_dir: {dir["out"]}
            {extra}
            """);
        return dir["config.yml"];
    }

    [Fact]
    public void Export_then_inference_from_the_gguf_base_answers_as_the_original_does()
    {
        using var dir = TestSetup.TempDir();
        var config = Config(dir, GgufFixtures.Quickstart);
        var export = InProcessCli.Run("export-gguf", config, "--outtype", "f32", "--out", dir["quick.gguf"]);
        Assert.True(export.Code == 0, export.Stderr + export.Stdout);
        Assert.Contains("Saved", export.Stdout);
        var original = InProcessCli.Run("inference", config, "--prompt", "The capital of France is", "--temperature", "0", "--max-new-tokens", "12");
        Assert.True(original.Code == 0, original.Stderr);
        using var ggufDir = TestSetup.TempDir();
        var fromGguf = InProcessCli.Run("inference", Config(ggufDir, dir["quick.gguf"], $"tokenizer_config: {GgufFixtures.Quickstart}"),
            "--prompt", "The capital of France is", "--temperature", "0", "--max-new-tokens", "12");
        Assert.True(fromGguf.Code == 0, fromGguf.Stderr);
        Assert.False(string.IsNullOrWhiteSpace(original.Stdout));
        Assert.Equal(original.Stdout, fromGguf.Stdout);
    }

    [Fact]
    public void Merge_lora_with_gguf_writes_the_merged_weights()
    {
        using var dir = TestSetup.TempDir();
        var model = GgufFixtures.Folder(dir, "tiny-llama");
        var config = Config(dir, model, "adapter: lora");
        var adapter = TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20");
        var result = InProcessCli.Run("merge-lora", config, "--lora-model-dir", adapter, "--gguf", "f32");
        Assert.True(result.Code == 0, result.Stderr + result.Stdout);
        var merged = Path.Combine(dir["out"], "merged");
        var gguf = Path.Combine(merged, "model-f32.gguf");
        var fromSafetensors = Axolotl.Models.CausalLM.FromPretrained(merged, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.ScalarType.Float32);
        var fromGguf = Axolotl.Models.CausalLM.FromPretrained(gguf, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.ScalarType.Float32);
        var expected = fromSafetensors.BaseStateDict().ToDictionary(p => p.Key, p => p.Value);
        var basis = Axolotl.Models.CausalLM.FromPretrained(model, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.ScalarType.Float32)
            .BaseStateDict().ToDictionary(p => p.Key, p => p.Value);
        Assert.False(expected["model.layers.0.self_attn.q_proj.weight"].allclose(basis["model.layers.0.self_attn.q_proj.weight"])); // the adapter changed it
        foreach (var (name, value) in fromGguf.BaseStateDict())
            Assert.True(value.eq(expected[name]).all().item<bool>(), name);
    }

    [Fact]
    public void A_gguf_base_without_a_tokenizer_folder_is_refused_in_one_sentence()
    {
        using var dir = TestSetup.TempDir();
        var result = InProcessCli.Run("inference", Config(dir, TestSetup.Data("gguf", "llama-2-tiny-random.gguf")), "--prompt", "hi", "--temperature", "0");
        InProcessCli.AssertUserError(result, "GGUF file", "tokenizer_config");
    }

    [Theory]
    [InlineData("q4_k_m", "q4_k_m is not built yet")]
    [InlineData("q5_1", "'q5_1' is not supported")]
    public void Unsupported_types_are_refused_by_name(string type, string message)
    {
        using var dir = TestSetup.TempDir();
        InProcessCli.AssertUserError(InProcessCli.Run("export-gguf", Config(dir, GgufFixtures.Quickstart), "--outtype", type), message);
    }

    [Fact]
    public void A_quantized_base_without_float_weights_is_refused()
    {
        using var dir = TestSetup.TempDir();
        var model = Directory.CreateDirectory(dir["int8-model"]).FullName;
        File.Copy(TestSetup.Data("reference", "models", "tiny-llama", "config.json"), Path.Combine(model, "config.json"));
        foreach (var f in Directory.GetFiles(TestSetup.Data("tok-tiny512"))) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        // Every tensor of tiny-llama, stored as U8 codes (as a pre-quantized checkpoint holds them).
        var reference = Axolotl.Models.CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.ScalarType.Float32);
        var header = new System.Text.Json.Nodes.JsonObject();
        long offset = 0;
        foreach (var (name, value) in reference.BaseStateDict())
        {
            header[name] = new System.Text.Json.Nodes.JsonObject
            {
                ["dtype"] = "U8", ["shape"] = new System.Text.Json.Nodes.JsonArray(value.shape.Select(s => (System.Text.Json.Nodes.JsonNode)s).ToArray()),
                ["data_offsets"] = new System.Text.Json.Nodes.JsonArray(offset, offset + value.numel()),
            };
            offset += value.numel();
        }
        var json = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        using (var f = File.Create(Path.Combine(model, "model.safetensors")))
        {
            f.Write(BitConverter.GetBytes((long)json.Length));
            f.Write(json);
            f.Write(new byte[offset]);
        }
        InProcessCli.AssertUserError(InProcessCli.Run("export-gguf", Config(dir, model)), "U8");
    }

    [Fact]
    public void An_architecture_llama_cpp_lacks_here_is_refused_by_name()
    {
        var config = DecoderConfigFor("gemma", tied: false);
        Assert.Contains("untied lm_head", Assert.Throws<UserError>(() => GgufArchitecture.For(config)).Message);
    }

    static Axolotl.Models.DecoderConfig DecoderConfigFor(string modelType, bool tied)
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "models", "tiny-llama", "config.json")))!.AsObject();
        json["model_type"] = modelType;
        json["tie_word_embeddings"] = tied;
        return Axolotl.Models.DecoderConfig.FromJson(json, "config.json");
    }
}
