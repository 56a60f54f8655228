using Axolotl.Tokenization;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Runtime;
using static TorchSharp.torch;

namespace Axolotl.Recipes;

/// <summary>
/// <c>axolotl merge-lora</c>: base_model + the adapter in lora_model_dir (default output_dir, as in Axolotl) folded into
/// one plain model, saved to {output_dir}/merged in the base checkpoint's dtype with its config and tokenizer files.
/// </summary>
internal static class MergeRecipe
{
    /// <param name="gguf">Also write {output_dir}/merged/model-{type}.gguf from the merged model (merge-lora --gguf TYPE).</param>
    public static string Run(AxolotlConfig config, IRecipeReporter reporter, Export.GgufOutType? gguf = null)
    {
        if (gguf != null) Training.Objectives.RewardTraining.RefuseGeneration(config, "merge-lora --gguf");
        var (model, tokenizer) = LoadMerged(config, reporter);
        var storedType = CausalLM.StoredWeightType(config.BaseModel);
        var outputDir = Path.Combine(config.OutputDir, "merged");
        // The base's shard files and weight_map, so tools that address shards by name find the same layout.
        model.SavePretrained(outputDir, storedType, ShardedSafetensors.LayoutOf(config.BaseModel));
        // transformers saves the generation config it loaded with the base, so carry the base's file over ours.
        var generation = Path.Combine(config.BaseModelConfig ?? config.BaseModel, "generation_config.json");
        if (File.Exists(generation) && model.Config.Classifier is null) AtomicFile.WriteAllText(Path.Combine(outputDir, "generation_config.json"), File.ReadAllText(generation));
        TokenizerFiles.CopyWithConfigChanges(config.TokenizerFolder(), outputDir, config, tokenizer);
        reporter.Info($"Saved merged model ({storedType}) to {Path.GetFullPath(outputDir)}");
        if (gguf is { } type)
            Export.GgufExport.Write(model, outputDir, tokenizer, type, Path.Combine(outputDir, $"model-{type.ToString().ToLowerInvariant()}.gguf"), reporter,
                Path.GetFileName(Path.TrimEndingDirectorySeparator(config.BaseModel)));
        return outputDir;
    }

    /// <summary>base_model with the adapter folded in, in fp32, and the tokenizer as the config leaves it.</summary>
    public static (CausalLM Model, Tokenizer Tokenizer) LoadMerged(AxolotlConfig config, IRecipeReporter reporter)
    {
        TorchRuntime.EnsureLoaded();
        // Folding B·A into W is one matmul per layer: no reason to need a GPU, and the result is written from host memory.
        if (config.Device.StartsWith("cuda", StringComparison.Ordinal)) reporter.Info($"merge-lora works on the CPU (device: {config.Device} applies to train, evaluate and inference).");
        var adapterDir = config.LoraModelDir ?? config.OutputDir;
        if (!Directory.Exists(adapterDir))
            throw new UserError($"merge-lora: the adapter folder '{adapterDir}' does not exist (set lora_model_dir or --lora-model-dir).");
        // The embeddings grow as in training when the config adds tokens (the adapter's saved embed_tokens/lm_head fill them).
        var tokenizer = ModelLoading.LoadTokenizer(config);
        var architecture = Training.Objectives.RewardTraining.Architecture(ModelLoading.WithTokenizerVocab(ModelLoading.Architecture(config), config, tokenizer),
            config, Training.Objectives.RewardTraining.PadTokenId(config, tokenizer));
        // Merge in fp32 whatever the checkpoint holds, and round to its dtype once, when saving.
        var model = CausalLM.Create(architecture, ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(config.BaseModel, growVocabSeed: config.Seed);
        if (QuantizationSettings.FromConfig(config) is { Kind: QuantKind.Nf4 } nf4)
        {
            // Axolotl's merge of a QLoRA adapter (lora_merge.py, simulate_nf4): every weight matrix goes through an
            // NF4 quantize → dequantize round trip first, so the merged model holds the base the adapter trained on.
            // As there, this includes the matrices QLoRA left unquantized (embeddings, lm_head).
            int count = Quantizer.RoundTripNf4(model, nf4.DoubleQuant, CausalLM.StoredWeightType(config.BaseModel));
            reporter.Info($"QLoRA adapter: {count} weight matrices of the base put through NF4 (double quantization {(nf4.DoubleQuant ? "on" : "off")}) before merging, as Axolotl does.");
        }
        var settings = Lora.Load(model, adapterDir);
        var merged = Lora.MergeAndUnload(model);
        reporter.Info($"Merged LoRA from {adapterDir} (r {settings.Rank}, alpha {settings.Alpha}) into {merged.Count} layers of {config.BaseModel}.");
        return (model, tokenizer);
    }
}
