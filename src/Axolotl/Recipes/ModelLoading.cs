using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Runtime;
using Axolotl.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Recipes;

/// <summary>How every command turns a config into a model: the same precision, quantization and adapter rules.</summary>
public static class ModelLoading
{
    /// <summary>
    /// bf16: true, or auto on a GPU or on a CPU with native bf16; else fp32. On a GPU auto assumes bf16 support
    /// (Ampere or newer), as TorchSharp cannot read the compute capability that torch.cuda.is_bf16_supported checks.
    /// </summary>
    public static ScalarType ComputeType(AxolotlConfig config, Device? device = null) =>
        config.Bf16 == "true" || (config.Bf16 == "auto" && (device is not null && ComputeDevice.IsCuda(device) || Hardware.CpuHasBf16()))
            ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>Quantizes the base's Linear layers as load_in_4bit / load_in_8bit ask, as bitsandbytes would at load time.</summary>
    public static void QuantizeAsConfigured(CausalLM model, AxolotlConfig config, IRecipeReporter reporter)
    {
        if (QuantizationSettings.FromConfig(config) is not { } quantization) return;
        var quantized = Quantizer.QuantizeLinears(model, quantization);
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
        if (config.Adapter is "lora" or "qlora")
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
