using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Runtime;
using Axolotl.Tokenization;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Recipes;

/// <summary>How every command turns a config into a model: the same precision, quantization and adapter rules.</summary>
internal static class ModelLoading
{
    /// <summary>
    /// bf16: true, or auto on a GPU or on a CPU with native bf16; else fp32. On a GPU auto assumes bf16 support
    /// (Ampere or newer), as TorchSharp cannot read the compute capability that torch.cuda.is_bf16_supported checks.
    /// </summary>
    public static ScalarType ComputeType(AxolotlConfig config, Device? device = null) =>
        config.Bf16 == Bf16Mode.True || (config.Bf16 == Bf16Mode.Auto && (device is not null && ComputeDevice.IsCuda(device) || Hardware.CpuHasBf16()))
            ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>The architecture every command builds: base_model_config's config.json with model_config's values over it.</summary>
    /// <remarks>reward_model / process_reward_model put a classifier head in place of lm_head.</remarks>
    public static DecoderConfig Architecture(AxolotlConfig config) =>
        Training.Objectives.RewardTraining.Architecture(DecoderConfig.FromFolder(config.BaseModelConfig ?? config.BaseModel, config.ModelConfig), config);

    /// <summary>
    /// base_model's weights in <paramref name="weightType"/>. With load_in_4bit / load_in_8bit the layers to quantize are
    /// quantized as they are read, one weight at a time from the memory-mapped shards, and their full-precision memory
    /// is never written: the peak is the quantized model plus one weight, not the full-precision model.
    /// </summary>
    public static CausalLM LoadBase(AxolotlConfig config, DecoderConfig architecture, ScalarType weightType, ScalarType computeType)
    {
        if (QuantizationSettings.FromConfig(config) is not { } quantization)
        {
            var model = CausalLM.Create(architecture, weightType, computeType);
            model.LoadWeights(config.BaseModel, growVocabSeed: config.Seed);
            return model;
        }
        CausalLM lm;
        Linear.LeaveWeightsUnwritten = true;
        try { lm = CausalLM.Create(architecture, weightType, computeType); }
        finally { Linear.LeaveWeightsUnwritten = false; }
        var byKey = new Dictionary<string, SafetensorsFile>();
        foreach (var file in ShardedSafetensors.WeightFiles(config.BaseModel).Select(SafetensorsFile.Open))
            foreach (var key in file.Entries.Keys) byKey[key] = file;
        var taken = new HashSet<string>();
        // One read buffer for every weight: a fresh tensor per weight is mapped anew by malloc, and faulting in its pages
        // (~7 µs a page on this VM) cost more than reading and quantizing (8B shape: 30 s of 98).
        Tensor? readBuffer = null;
        using (no_grad())
        try
        {
            // In checkpoint order, so the shards are read front to back.
            foreach (var path in Quantizer.QuantizableLinears(lm).OrderBy(p => byKey.TryGetValue(p + ".weight", out var f) ? (f.Path, f.Entries[p + ".weight"].Begin) : ("", 0L)))
            {
                var key = path + ".weight";
                var linear = Quantizer.LinearAt(lm, path);
                // Anything amiss (a missing tensor, a wrong shape or dtype) is left to LoadWeights, which names it.
                if (!byKey.TryGetValue(key, out var file) || !file.Entries[key].Shape.SequenceEqual(linear.weight.shape)
                    || file.Entries[key].DType is not ("F32" or "BF16" or "F16")) continue;
                var entry = file.Entries[key];
                var storedType = SafetensorsFile.ToScalarType(entry.DType);
                long count = entry.Shape.Aggregate(1L, (a, b) => a * b);
                if (readBuffer is null || readBuffer.dtype != storedType || readBuffer.numel() < count)
                {
                    readBuffer?.Dispose();
                    readBuffer = empty(count, storedType).DetachFromDisposeScope();
                }
                using var stored = readBuffer.narrow(0, 0, count).view(entry.Shape);
                file.ReadInto(key, stored);
                using var converted = stored.dtype == weightType ? stored.alias() : stored.to(weightType);
                Quantizer.Replace(lm, path, Quantizer.Quantize(converted, quantization), quantization);
                taken.Add(key);
            }
        }
        finally { readBuffer?.Dispose(); }
        lm.LoadWeights(config.BaseModel, growVocabSeed: config.Seed, loadedElsewhere: taken);
        return lm;
    }

    /// <summary>
    /// reinit_weights: the architecture with HF's random init. With load_in_4bit / load_in_8bit each weight to quantize is
    /// drawn on its own and quantized at once, as <see cref="LoadBase"/> does with a checkpoint's weights: the peak is
    /// the quantized model plus one weight (at the 1B shape the bf16 model first had made it 3.3 GiB).
    /// </summary>
    public static CausalLM RandomBase(AxolotlConfig config, DecoderConfig architecture, ScalarType weightType, ScalarType computeType)
    {
        if (QuantizationSettings.FromConfig(config) is not { } quantization)
        {
            var model = CausalLM.Create(architecture, weightType, computeType);
            model.InitializeWeights(config.Seed);
            return model;
        }
        CausalLM lm;
        Linear.LeaveWeightsUnwritten = true;
        try { lm = CausalLM.Create(architecture, weightType, computeType); }
        finally { Linear.LeaveWeightsUnwritten = false; }
        var quantizable = Quantizer.QuantizableLinears(lm).ToHashSet();
        lm.InitializeWeights(config.Seed, (path, draw) =>
        {
            if (!quantizable.Contains(path)) return false;
            using var weight = draw();
            Quantizer.Replace(lm, path, Quantizer.Quantize(weight, quantization), quantization);
            return true;
        });
        return lm;
    }

    /// <summary>Quantizes the base's Linear layers as load_in_4bit / load_in_8bit ask, as bitsandbytes would at load time
    /// (those <see cref="LoadBase"/> quantized as it read them stay as they are).</summary>
    public static void QuantizeAsConfigured(CausalLM model, AxolotlConfig config, IRecipeReporter reporter)
    {
        if (QuantizationSettings.FromConfig(config) is not { } quantization) return;
        Quantizer.QuantizeLinears(model, quantization);
        var quantized = model.modules().OfType<QuantizedLinear>().ToList();
        reporter.Info($"Quantized {quantized.Count} Linear layers to {(quantization.Kind == QuantKind.Nf4 ? $"NF4 (double quantization {(quantization.DoubleQuant ? "on" : "off")})" : "int8")}: " +
                      $"{Quantizer.QuantizedWeightBytes(model) / 1048576.0:F1} MiB of weights.");
    }

    /// <summary>
    /// The trained result as evaluate and inference use it: base_model in the compute dtype, quantized as in training
    /// (a QLoRA adapter learned against the NF4 base, so it is scored on that base), plus the adapter from
    /// lora_model_dir, else output_dir.
    /// </summary>
    public static CausalLM LoadTrained(AxolotlConfig config, DecoderConfig architecture, Tokenizer? tokenizer, string command, IRecipeReporter reporter, Device device)
    {
        var type = ComputeType(config, device);
        var model = FinetuneRecipe.LoadModel(config, WithTokenizerVocab(architecture, config, tokenizer), type, type, reporter);
        QuantizeAsConfigured(model, config, reporter);
        if (config.HasLora)
        {
            var dir = config.LoraModelDir ?? config.OutputDir;
            if (!File.Exists(Path.Combine(dir, Lora.ConfigFile)) || !File.Exists(Path.Combine(dir, Lora.WeightsFile)))
                throw new UserError($"{command}: no LoRA adapter in '{dir}' ({Lora.ConfigFile} and {Lora.WeightsFile}); set lora_model_dir (--lora-model-dir), or train first.");
            var settings = Lora.Load(model, dir);
            reporter.Info($"LoRA adapter from {dir} (r {settings.Rank}, alpha {settings.Alpha}).");
        }
        return Place(model, device, reporter);
    }

    /// <summary>The device the config's <c>device</c> key names on this machine (a UserError naming the key when it is not there).</summary>
    public static Device ResolveDevice(AxolotlConfig config) => ComputeDevice.Resolve(config.Device, config.SourcePath);

    /// <summary>
    /// Moves a model that was built, loaded, quantized and given its adapter on the CPU to <paramref name="device"/>:
    /// parameters, buffers, quantized codes and LoRA weights together. Optimizers and parameter lists must be taken
    /// after this, since moving replaces each parameter. On the CPU nothing moves.
    /// </summary>
    public static CausalLM Place(CausalLM model, Device device, IRecipeReporter reporter)
    {
        if (device.type != DeviceType.CPU) model.to(device);
        if (ComputeDevice.IsCuda(device)) Hardware.GpuInUse = true;
        reporter.Info($"Device: {ComputeDevice.Describe(device)}.");
        return model;
    }

    /// <summary>The tokenizer as Axolotl's loader leaves it: special_tokens set (as special added tokens) and tokens added.</summary>
    public static Tokenizer LoadTokenizer(AxolotlConfig config)
    {
        if (Export.GgufModel.IsGguf(config.TokenizerFolder()))
            throw new UserError($"base_model '{config.BaseModel}' is a GGUF file: set tokenizer_config to the folder holding its tokenizer files (tokenizer.json, tokenizer_config.json).");
        var tokenizer = Tokenizer.FromFolder(config.TokenizerFolder());
        ConfigTokens.Apply(tokenizer, config.SpecialTokens, null, config.Tokens, config.Adapter != null, config.LoraModulesToSave);
        return tokenizer;
    }

    /// <summary>
    /// The tokenizer when the folder has one, else null (pre-tokenized data needs none): what train and evaluate use
    /// when the data came from the cache without loading it.
    /// </summary>
    public static Tokenizer? LoadTokenizerIfPresent(AxolotlConfig config) =>
        File.Exists(Path.Combine(config.TokenizerFolder(), "tokenizer.json")) || File.Exists(Path.Combine(config.TokenizerFolder(), "tokenizer.model"))
            ? LoadTokenizer(config) : null;

    /// <summary>
    /// The architecture with room for every token, as Axolotl's model loader resizes it: to len(tokenizer), rounded up
    /// to a multiple of 32 with resize_token_embeddings_to_32x, when the embeddings are smaller. Growth is for tokens the
    /// config adds; a tokenizer that is simply bigger than the model does not belong to it.
    /// </summary>
    public static DecoderConfig WithTokenizerVocab(DecoderConfig architecture, AxolotlConfig config, Tokenizer? tokenizer)
    {
        if (tokenizer is null) return architecture;
        int needed = config.ResizeTokenEmbeddingsTo32x ? (tokenizer.VocabSize + 31) / 32 * 32 : tokenizer.VocabSize;
        if (needed <= architecture.VocabSize) return architecture;
        bool configAdds = config.SpecialTokens is { Count: > 0 } || config.Tokens is { Count: > 0 } || config.ResizeTokenEmbeddingsTo32x;
        if (!configAdds)
            throw new UserError($"the tokenizer in '{config.TokenizerFolder()}' has {tokenizer.VocabSize} tokens but the model's vocab_size is {architecture.VocabSize}; they do not belong together.");
        var raw = (System.Text.Json.Nodes.JsonObject)architecture.Raw.DeepClone();
        raw["vocab_size"] = needed;
        return architecture with { VocabSize = needed, Raw = raw };
    }
}
