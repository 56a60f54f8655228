using System.Text.Json.Nodes;
using Axolotl.IO;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.IO;

/// <summary>Sharded checkpoints as transformers writes and reads them, and the checks that name a broken one.</summary>
public class ShardedSafetensorsTests
{
    static readonly string TinyLlama = TestSetup.Data("reference", "models", "tiny-llama");

    static CausalLM Load(string dir) => CausalLM.FromPretrained(dir, ScalarType.Float32, ScalarType.Float32);

    static Tensor Logits(CausalLM model)
    {
        using var _ = no_grad();
        return model.forward(tensor(new long[] { 1, 5, 9, 200, 17 }).unsqueeze(0));
    }

    [Theory]
    [InlineData("5GB", 5_000_000_000)]
    [InlineData("5GiB", 5L << 30)]
    [InlineData("500MB", 500_000_000)]
    [InlineData("10KB", 10_000)]
    [InlineData("5Gb", 625_000_000)] // bits, as transformers reads a lowercase b
    [InlineData("123", 123)]
    public void Max_shard_size_parses_as_transformers_does(string text, long bytes) =>
        Assert.Equal(bytes, ShardedSafetensors.ParseSize(text, "max_shard_size"));

    [Theory]
    [InlineData("5.5GB")]
    [InlineData("lots")]
    [InlineData("0MB")]
    public void A_bad_size_is_a_user_error(string text) =>
        Assert.Contains("max_shard_size", Assert.Throws<UserError>(() => ShardedSafetensors.ParseSize(text, "max_shard_size")).Message);

    [Fact]
    public void Split_follows_huggingface_hub()
    {
        // A tensor over the limit gets its own shard, appended when it is met; the running shard carries on after it.
        var shards = ShardedSafetensors.Split([("a", 4), ("b", 4), ("c", 4), ("d", 10), ("e", 2)], 8);
        Assert.Equal([["a", "b"], ["d"], ["c", "e"]], shards);
    }

    [Fact]
    public void Sharded_save_loads_back_bit_identically_and_a_single_save_replaces_it()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load(TinyLlama);
        model.SavePretrained(dir["sharded"], maxShardBytes: 150_000);

        var files = Directory.GetFiles(dir["sharded"], "*.safetensors").Select(Path.GetFileName).Order().ToList();
        Assert.True(files.Count > 2, string.Join(", ", files));
        Assert.Equal(Enumerable.Range(1, files.Count).Select(i => $"model-{i:00000}-of-{files.Count:00000}.safetensors"), files);
        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["sharded"], "model.safetensors.index.json")))!;
        var weightMap = index["weight_map"]!.AsObject();
        Assert.Equal(model.named_parameters().Select(p => p.name).Order(StringComparer.Ordinal), weightMap.Select(kv => kv.Key));
        Assert.Equal(model.parameters().Sum(p => p.numel() * 4), (long)index["metadata"]!["total_size"]!);
        foreach (var (key, file) in weightMap)
            Assert.Contains(key, SafetensorsFile.Open(Path.Combine(dir["sharded"], (string)file!)).Entries.Keys);

        var reloaded = Load(dir["sharded"]);
        foreach (var ((name, a), (_, b)) in model.named_parameters().Zip(reloaded.named_parameters()))
            Assert.True(a.eq(b).all().item<bool>(), name);

        // Saving the same folder unsharded removes the shards and the index, so no loader sees a mix.
        reloaded.SavePretrained(dir["sharded"]);
        Assert.Equal(["model.safetensors"], Directory.GetFiles(dir["sharded"], "model*").Select(Path.GetFileName));
        Assert.Equal(0, (Logits(Load(dir["sharded"])) - Logits(model)).abs().max().item<float>());
    }

    [Fact]
    public void A_save_along_a_base_layout_keeps_its_files_and_weight_map()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load(TinyLlama);
        model.SavePretrained(dir["base"], maxShardBytes: 200_000);
        var layout = ShardedSafetensors.LayoutOf(dir["base"])!;
        Assert.Null(ShardedSafetensors.LayoutOf(TinyLlama));
        model.SavePretrained(dir["copy"], ScalarType.BFloat16, layout);
        Assert.Equal(layout.OrderBy(kv => kv.Key), ShardedSafetensors.LayoutOf(dir["copy"])!.OrderBy(kv => kv.Key));
        Assert.All(ShardedSafetensors.WeightFiles(dir["copy"]).SelectMany(f => SafetensorsFile.Open(f).Entries.Values), e => Assert.Equal("BF16", e.DType));
    }

    [Fact]
    public void Half_precision_checkpoints_load_into_fp32()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load(TinyLlama);
        model.SavePretrained(dir["f16"], ScalarType.Float16);
        var weight = Load(dir["f16"]).model.embed_tokens.weight;
        Assert.Equal(ScalarType.Float32, weight.dtype);
        Assert.True(weight.eq(model.model.embed_tokens.weight.to(ScalarType.Float16).to(ScalarType.Float32)).all().item<bool>());
    }

    static string ShardedCopy(TempDir dir)
    {
        using var scope = NewDisposeScope();
        Load(TinyLlama).SavePretrained(dir["m"], maxShardBytes: 150_000);
        foreach (var f in new[] { "config.json" }) File.Copy(Path.Combine(TinyLlama, f), Path.Combine(dir["m"], f), true);
        return dir["m"];
    }

    [Fact]
    public void An_index_naming_a_missing_shard_is_a_user_error()
    {
        using var dir = TestSetup.TempDir();
        var path = ShardedCopy(dir);
        File.Delete(Directory.GetFiles(path, "model-0*").Order().ElementAt(1));
        var e = Assert.Throws<UserError>(() => Load(path));
        Assert.Contains("model.safetensors.index.json", e.Message);
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void An_index_pointing_a_tensor_at_the_wrong_shard_is_a_user_error()
    {
        using var dir = TestSetup.TempDir();
        var path = ShardedCopy(dir);
        var indexPath = Path.Combine(path, "model.safetensors.index.json");
        var index = JsonNode.Parse(File.ReadAllText(indexPath))!;
        var map = index["weight_map"]!.AsObject();
        var first = (string)map["model.embed_tokens.weight"]!;
        var other = map.Select(kv => (string)kv.Value!).First(f => f != first);
        map["model.embed_tokens.weight"] = other;
        File.WriteAllText(indexPath, index.ToJsonString());
        var e = Assert.Throws<UserError>(() => Load(path));
        Assert.Contains("'model.embed_tokens.weight'", e.Message);
        Assert.Contains(other, e.Message);
    }

    [Fact]
    public void Integer_or_misshapen_weights_are_user_errors_naming_file_and_tensor()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load(TinyLlama);
        var tensors = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
        Directory.CreateDirectory(dir["int"]);
        File.Copy(Path.Combine(TinyLlama, "config.json"), dir["int/config.json"]);
        var broken = new Dictionary<string, Tensor>(tensors) { ["model.norm.weight"] = ones(64, dtype: ScalarType.Int32) };
        SafetensorsFile.Write(dir["int/model.safetensors"], broken);
        var e = Assert.Throws<UserError>(() => Load(dir["int"]));
        Assert.Contains("model.safetensors", e.Message);
        Assert.Contains("'model.norm.weight'", e.Message);
        Assert.Contains("I32", e.Message);

        broken["model.norm.weight"] = ones(32);
        SafetensorsFile.Write(dir["int/model.safetensors"], broken);
        e = Assert.Throws<UserError>(() => Load(dir["int"]));
        Assert.Contains("'model.norm.weight' has shape [32]", e.Message);
    }

    [Fact]
    public void Memory_mapped_reads_return_the_stored_bytes_for_every_dtype()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = randn(17, 3), ["bf16"] = randn(5).to(ScalarType.BFloat16), ["f16"] = randn(2, 2, 2).to(ScalarType.Float16),
            ["i64"] = arange(7), ["empty"] = zeros(0, 4),
        };
        SafetensorsFile.Write(dir["t.safetensors"], tensors);
        var file = SafetensorsFile.Open(dir["t.safetensors"]);
        foreach (var (name, t) in tensors)
        {
            var read = file.Read(name);
            Assert.Equal(t.dtype, read.dtype);
            Assert.Equal(t.shape, read.shape);
            Assert.True(read.eq(t).all().item<bool>(), name);
        }
    }

    [Fact]
    public void Reads_through_a_symlink_as_the_hub_cache_lays_files_out()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var t = randn(64, 8);
        SafetensorsFile.Write(dir["blob"], [new("w", t)]);
        File.CreateSymbolicLink(dir["model.safetensors"], dir["blob"]);
        Assert.True(SafetensorsFile.Open(dir["model.safetensors"]).Read("w").eq(t).all().item<bool>());
    }
}
