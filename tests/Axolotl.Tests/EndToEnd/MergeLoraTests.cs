using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.IO;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>`axolotl merge-lora`: the merged model computes what base + adapter compute, saved as an HF folder.</summary>
public class MergeLoraTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static readonly string Adapter = TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20");

    static string Config(TempDir dir, string baseModel, string extra = "")
    {
        File.WriteAllText(dir["data.jsonl"], """{"input_ids": [1, 5, 9], "labels": [1, 5, 9]}""" + "\n");
        return $"""
            base_model: {baseModel}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["data.jsonl"]}
            adapter: lora
            lora_r: 8
            lora_alpha: 16
            lora_target_linear: true
            learning_rate: 0.001
            output_dir: {dir["out"]}
            {extra}
            """;
    }

    static Tensor Logits(CausalLM model)
    {
        using var _ = no_grad();
        return model.forward(tensor(new long[] { 1, 5, 9, 200, 17, 3, 88, 400 }).unsqueeze(0));
    }

    [Fact]
    public void Merged_model_gives_base_plus_adapter_logits()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var baseDir = TestSetup.Data("reference", "models", "tiny-llama");
        File.WriteAllText(dir["config.yml"], Config(dir, baseDir));

        Assert.Equal(0, Cli.Cli.Run(["merge-lora", dir["config.yml"], "--lora-model-dir", Adapter]));

        var mergedDir = Path.Combine(dir["out"], "merged");
        var adapted = CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32);
        Lora.Load(adapted, Adapter);
        var merged = CausalLM.FromPretrained(mergedDir, ScalarType.Float32, ScalarType.Float32);
        var diff = (Logits(merged) - Logits(adapted)).abs().max().item<float>();
        output.WriteLine($"max |merged - base+adapter| = {diff}");
        Assert.True(diff < 1e-5, $"max |merged - base+adapter| = {diff}");
        Assert.True((Logits(merged) - Logits(CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32))).abs().max().item<float>() > 1e-3);

        var saved = SafetensorsFile.Open(Path.Combine(mergedDir, "model.safetensors"));
        var original = SafetensorsFile.Open(Path.Combine(baseDir, "model.safetensors"));
        Assert.Equal(original.Entries.Keys.Order(), saved.Entries.Keys.Order());
        Assert.All(saved.Entries.Values, e => Assert.Equal("F32", e.DType));
        Assert.Equal(File.ReadAllText(Path.Combine(baseDir, "generation_config.json")), File.ReadAllText(Path.Combine(mergedDir, "generation_config.json")));
        Assert.True(File.Exists(Path.Combine(mergedDir, "config.json")));
        Assert.True(File.Exists(Path.Combine(mergedDir, "tokenizer.json")));
    }

    [Fact]
    public void Adapter_defaults_to_output_dir_and_the_base_dtype_is_kept()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        // A bf16 base: the merged model must come out bf16 too.
        var bf16Base = dir["base-bf16"];
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32)
            .SavePretrained(bf16Base, ScalarType.BFloat16);
        Directory.CreateDirectory(dir["out"]);
        foreach (var file in Directory.GetFiles(Adapter)) File.Copy(file, Path.Combine(dir["out"], Path.GetFileName(file)));
        File.WriteAllText(dir["config.yml"], Config(dir, bf16Base));

        Assert.Equal(0, Cli.Cli.Run(["merge-lora", dir["config.yml"]]));

        var mergedDir = Path.Combine(dir["out"], "merged");
        Assert.All(SafetensorsFile.Open(Path.Combine(mergedDir, "model.safetensors")).Entries.Values, e => Assert.Equal("BF16", e.DType));
        Assert.Equal("bfloat16", (string)JsonNode.Parse(File.ReadAllText(Path.Combine(mergedDir, "config.json")))!["torch_dtype"]!);
        var adapted = CausalLM.FromPretrained(bf16Base, ScalarType.Float32, ScalarType.Float32);
        Lora.Load(adapted, Adapter);
        var merged = CausalLM.FromPretrained(mergedDir, ScalarType.Float32, ScalarType.Float32);
        // One bf16 rounding of the merged weights separates them.
        Assert.True((Logits(merged) - Logits(adapted)).abs().max().item<float>() < 0.05);
    }

    [Fact]
    public void A_sharded_base_gives_a_merged_model_with_the_same_shards()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var baseDir = TestSetup.Data("reference", "models", "tiny-llama");
        var sharded = dir["base-sharded"];
        CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32).SavePretrained(sharded, maxShardBytes: 150_000);
        File.WriteAllText(dir["config.yml"], Config(dir, sharded));

        Assert.Equal(0, Cli.Cli.Run(["merge-lora", dir["config.yml"], "--lora-model-dir", Adapter]));

        var mergedDir = Path.Combine(dir["out"], "merged");
        Assert.False(File.Exists(Path.Combine(mergedDir, "model.safetensors")));
        Assert.Equal(ShardedSafetensors.LayoutOf(sharded)!.OrderBy(kv => kv.Key), ShardedSafetensors.LayoutOf(mergedDir)!.OrderBy(kv => kv.Key));
        var adapted = CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32);
        Lora.Load(adapted, Adapter);
        var diff = (Logits(CausalLM.FromPretrained(mergedDir, ScalarType.Float32, ScalarType.Float32)) - Logits(adapted)).abs().max().item<float>();
        Assert.True(diff < 1e-5, $"max |merged - base+adapter| = {diff}");
    }

    [Fact]
    public void A_missing_adapter_folder_is_a_user_error()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["config.yml"], Config(dir, TestSetup.Data("reference", "models", "tiny-llama")));
        Assert.Equal(2, Cli.Cli.Run(["merge-lora", dir["config.yml"], "--lora-model-dir", dir["nowhere"]]));
        Assert.False(Directory.Exists(Path.Combine(dir["out"], "merged")));
    }
}
