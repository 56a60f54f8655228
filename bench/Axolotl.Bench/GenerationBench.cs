using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Axolotl.Models;
using Axolotl.Runtime;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench generate MODEL_DIR [--tokens N] [--prompt-tokens P] [--dtype fp32|bf16] [--load-in-4bit]</c>: greedy decoding
/// speed with and without the KV cache. A folder with only config.json gets random weights, so any size can be
/// measured without a checkpoint (e.g. hidden 512, 8 layers, vocab 32000: about 60M parameters).
/// </summary>
public static class GenerationBench
{
    public static int Run(string[] args)
    {
        string? modelDir = null;
        int tokens = 64, promptTokens = 32;
        bool nf4 = false;
        var dtype = ScalarType.Float32;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new UserError($"{args[i]} needs a value.");
            int NextInt() => int.TryParse(Next(), NumberStyles.None, CultureInfo.InvariantCulture, out var v) && v >= 1
                ? v : throw new UserError($"{args[i - 1]} needs a whole number of at least 1.");
            switch (args[i])
            {
                case "--tokens": tokens = NextInt(); break;
                case "--prompt-tokens": promptTokens = NextInt(); break;
                case "--load-in-4bit": nf4 = true; break;
                case "--dtype": dtype = Next() switch { "fp32" => ScalarType.Float32, "bf16" => ScalarType.BFloat16, var v => throw new UserError($"--dtype needs fp32 or bf16, not '{v}'.") }; break;
                case var a when a.StartsWith('-'): throw new UserError($"unknown option {a}; usage: axolotl-bench generate MODEL_DIR [--tokens N] [--prompt-tokens P] [--dtype fp32|bf16] [--load-in-4bit]");
                default: modelDir = args[i]; break;
            }
        }
        if (modelDir == null) throw new UserError("usage: axolotl-bench generate MODEL_DIR [--tokens N] [--prompt-tokens P] [--dtype fp32|bf16] [--load-in-4bit]");

        TorchRuntime.EnsureLoaded();
        var config = DecoderConfig.FromFolder(modelDir);
        var model = CausalLM.Create(config, dtype, dtype);
        bool random = !File.Exists(Path.Combine(modelDir, "model.safetensors")) && !File.Exists(Path.Combine(modelDir, "model.safetensors.index.json"));
        if (random) model.InitializeWeights(0);
        else model.LoadWeights(modelDir);
        // As inference of a QLoRA run sees the base: NF4 with double quantization, dequantized per product.
        if (nf4) Quantization.Quantizer.QuantizeLinears(model, new Quantization.QuantizationSettings(Quantization.QuantKind.Nf4));
        long parameters = model.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(model);
        var prompt = Enumerable.Range(0, promptTokens).Select(i => 1 + i * 7 % (config.VocabSize - 1)).ToList();
        Console.WriteLine($"{modelDir}: {config.ModelType}, {parameters:N0} parameters{(random ? " (random weights)" : "")}, {dtype}, " +
                          $"{promptTokens} prompt tokens, {tokens} new tokens, {get_num_threads()} torch threads");
        // No eos: every run generates exactly the requested number of tokens.
        var options = new GenerationOptions { MaxNewTokens = tokens };
        Generation.Generate(model, prompt, options with { MaxNewTokens = 2 }); // warm-up
        // Decoding reads every weight once per token, but of the input embedding only the token's row (the head reads
        // the whole matrix when tied): against the copy bandwidth, that bounds tokens/s with the KV cache.
        long weightBytes = model.named_parameters().Where(p => p.name != "model.embed_tokens.weight" || config.TieWordEmbeddings)
            .Sum(p => p.parameter.numel() * p.parameter.element_size()) + Quantization.Quantizer.QuantizedWeightBytes(model);
        double copyBytesPerSecond = CopyBandwidth();
        var firstToken = Stopwatch.StartNew();
        Generation.Generate(model, prompt, options with { MaxNewTokens = 1 });
        double promptSeconds = firstToken.Elapsed.TotalSeconds;
        foreach (bool cache in new[] { true, false })
        {
            var clock = Stopwatch.StartNew();
            var generated = Generation.Generate(model, prompt, options with { UseCache = cache });
            double seconds = clock.Elapsed.TotalSeconds;
            var result = new JsonObject
            {
                ["benchmark"] = "generate", ["kv_cache"] = cache, ["parameters"] = parameters, ["dtype"] = dtype.ToString(),
                ["prompt_tokens"] = promptTokens, ["new_tokens"] = generated.Count, ["seconds"] = Math.Round(seconds, 3),
                ["tokens_per_second"] = Math.Round(generated.Count / seconds, 2),
            };
            if (cache)
            {
                // After the first token (the prompt's pass), as llama.cpp's decode rate is counted.
                result["decode_tokens_per_second"] = Math.Round((generated.Count - 1) / Math.Max(1e-9, seconds - promptSeconds), 2);
                result["weight_bytes_per_token"] = weightBytes;
                result["copy_gb_per_s"] = Math.Round(copyBytesPerSecond / 1e9, 2);
                result["bandwidth_bound_tokens_per_second"] = Math.Round(copyBytesPerSecond / weightBytes, 2);
            }
            Console.WriteLine(result.ToJsonString());
        }
        return 0;
    }

    /// <summary>Bytes read plus bytes written per second by torch copying a 256 MiB tensor (median of 5), STREAM's
    /// "copy" convention: far larger than the caches, so it is what main memory sustains for these threads.</summary>
    static double CopyBandwidth()
    {
        using var scope = NewDisposeScope();
        var source = ones(64L << 20);
        var target = empty_like(source);
        target.copy_(source);
        var times = new List<double>();
        for (int i = 0; i < 5; i++)
        {
            var clock = Stopwatch.StartNew();
            target.copy_(source);
            times.Add(clock.Elapsed.TotalSeconds);
        }
        times.Sort();
        return 2.0 * source.numel() * source.element_size() / times[2];
    }
}
