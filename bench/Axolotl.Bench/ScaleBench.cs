using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Runtime;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// Real model sizes without downloading them:
/// <c>axolotl-bench scale write config.json DIR [--layers N] [--seq S]</c> writes a random-weight checkpoint in that
/// config's shapes (bf16, one shard per decoder layer plus the embeddings and the head, with the index), random
/// pre-tokenized rows and lora.yml, qlora.yml and full.yml beside it (each also with a _gc variant: gradient
/// checkpointing on), to train with <c>axolotl-bench memory DIR/qlora.yml</c> or <c>axolotl train</c>.
/// <c>axolotl-bench scale load DIR/qlora.yml</c> loads the base as that config would (quantized while read for
/// QLoRA) and prints the seconds and the peak RSS: run it in its own process, one config at a time.
/// E.g. the 8B-wide shape: <c>scale write ../shared/testdata/model-configs/meta-llama-3.1-8B-Instruct.json /tmp/8bw --layers 4</c>.
/// </summary>
public static class ScaleBench
{
    const string Usage = "usage: axolotl-bench scale write config.json DIR [--layers N] [--seq S] | axolotl-bench scale load DIR/config.yml";

    public static int Run(string[] args)
    {
        if (args.Length >= 3 && args[0] == "write")
        {
            int? layers = null;
            int seq = 512;
            for (int i = 3; i < args.Length; i++)
            {
                if (args[i] == "--layers" && i + 1 < args.Length) layers = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else if (args[i] == "--seq" && i + 1 < args.Length) seq = int.Parse(args[++i], CultureInfo.InvariantCulture);
                else throw new UserError(Usage);
            }
            Write(args[1], args[2], layers, seq);
            return 0;
        }
        if (args.Length == 2 && args[0] == "load") return Load(args[1]);
        throw new UserError(Usage);
    }

    static void Write(string configPath, string dir, int? layers, int seq)
    {
        TorchRuntime.EnsureLoaded();
        Directory.CreateDirectory(dir);
        var raw = JsonFiles.ReadObject(configPath);
        if (layers is int n) raw["num_hidden_layers"] = n;
        raw["torch_dtype"] = "bfloat16";
        AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        var arch = DecoderConfig.FromFolder(dir);
        var clock = Stopwatch.StartNew();
        // The parameter names and shapes of the real model, from a model built on the meta device (no memory).
        List<(string Name, long[] Shape)> names;
        set_default_device(new Device(TorchSharp.DeviceType.META));
        try
        {
            using var meta = CausalLM.Create(arch, ScalarType.BFloat16, ScalarType.BFloat16);
            names = meta.named_parameters().Select(p => (p.name, p.parameter.shape)).ToList();
        }
        finally { set_default_device(CPU); }
        var shards = names.GroupBy(p => p.Name.StartsWith("model.layers.") ? "layer" + p.Name.Split('.')[2] : p.Name.StartsWith("model.embed") ? "embed" : "head").ToList();
        var map = new JsonObject();
        long total = 0;
        var generator = new Generator(1234);
        for (int s = 0; s < shards.Count; s++)
        {
            var file = $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
            using var scope = NewDisposeScope();
            var tensors = shards[s].Select(p => new KeyValuePair<string, Tensor>(p.Name,
                p.Shape.Length == 1 ? ones(p.Shape, ScalarType.BFloat16)
                    : (randn(p.Shape, generator: generator) * arch.InitializerRange).to(ScalarType.BFloat16))).ToList();
            SafetensorsFile.Write(Path.Combine(dir, file), tensors);
            foreach (var (name, t) in tensors) { map[name] = file; total += t.numel() * 2; }
            Console.Error.WriteLine($"wrote {file} ({shards[s].Key}), {clock.Elapsed.TotalSeconds:F0} s");
        }
        AtomicFile.WriteAllText(Path.Combine(dir, ShardedSafetensors.IndexFile),
            new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = map }.ToJsonString());
        var random = new Random(5);
        File.WriteAllLines(Path.Combine(dir, "data.jsonl"), Enumerable.Range(0, 64).Select(_ =>
            new JsonObject { ["input_ids"] = new JsonArray(Enumerable.Range(0, seq).Select(_ => (JsonNode)random.Next(1, arch.VocabSize)).ToArray()) }.ToJsonString()));
        foreach (var (name, keys) in new[]
                 {
                     ("lora", "adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"),
                     ("qlora", "adapter: qlora\nload_in_4bit: true\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n"),
                     ("full", ""),
                 })
            foreach (var gc in new[] { false, true })
                File.WriteAllText(Path.Combine(dir, $"{name}{(gc ? "_gc" : "")}.yml"),
                    $"base_model: {Path.GetFullPath(dir)}\ndatasets:\n  - path: {Path.GetFullPath(Path.Combine(dir, "data.jsonl"))}\n{keys}" +
                    $"sequence_len: {seq}\nmicro_batch_size: 1\nlearning_rate: 0.0001\nbf16: auto\ngradient_checkpointing: {(gc ? "true" : "false")}\n" +
                    $"save_strategy: \"no\"\noutput_dir: {Path.GetFullPath(Path.Combine(dir, "out-" + name))}\n");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{dir}: {total / 1e9:F2} GB of bf16 weights in {shards.Count} shards, {clock.Elapsed.TotalSeconds:F0} s; configs lora, qlora, full (+ _gc)"));
    }

    static int Load(string configPath)
    {
        TorchRuntime.EnsureLoaded();
        var config = ConfigLoader.Load(configPath);
        var arch = DecoderConfig.FromFolder(config.BaseModel);
        var type = ModelLoading.ComputeType(config);
        long before = Hardware.RssKb();
        var clock = Stopwatch.StartNew();
        using var model = ModelLoading.LoadBase(config, arch, type, type);
        double seconds = clock.Elapsed.TotalSeconds;
        long bf16Bytes = (model.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(model)) * 2;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{configPath}: loaded in {seconds:F1} s; peak RSS {Hardware.PeakRssKb() / 1048576.0:F2} GiB (before loading {before / 1048576.0:F2} GiB, after {Hardware.RssKb() / 1048576.0:F2} GiB); the model in bf16 is {bf16Bytes / 1073741824.0:F2} GiB"));
        return 0;
    }
}
