using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Runtime;
using Axolotl.Tokenization;

namespace Axolotl.Inference;

/// <summary>
/// What generating from a trained config needs, shared by <c>axolotl inference</c>, the chat client and the server:
/// the model with its adapter, Axolotl's generation settings, the prompt format and the end-of-sequence ids.
/// </summary>
internal static class InferenceSetup
{
    /// <summary>The GenerationConfig of Axolotl's do_inference: sampling at temperature 0.9, top-p 0.95, top-k 40, repetition penalty 1.1.</summary>
    public static GenerationOptions AxolotlGeneration(AxolotlConfig config) => new()
    {
        MaxNewTokens = 1024, DoSample = true, Temperature = 0.9, TopP = 0.95, TopK = 40, RepetitionPenalty = 1.1,
        Seed = (ulong)config.Seed,
    };

    public static (CausalLM Model, Tokenizer Tokenizer) Load(AxolotlConfig config, IRecipeReporter reporter)
    {
        Training.Objectives.RewardTraining.RefuseGeneration(config, "inference");
        TorchRuntime.EnsureLoaded();
        var device = ModelLoading.ResolveDevice(config);
        var architecture = ModelLoading.Architecture(config);
        var tokenizer = ModelLoading.LoadTokenizer(config);
        var model = ModelLoading.LoadTrained(config, architecture, tokenizer, "inference", reporter, device);
        return (model, tokenizer);
    }

    /// <summary>
    /// The prompt text for an instruction: the first dataset's prompt without its response (alpaca), as the model saw
    /// prompts in training; for completion or pre-tokenized data, the text itself, trimmed as Axolotl trims it.
    /// </summary>
    public static string FormatPrompt(AxolotlConfig config, string instruction) =>
        config.Datasets.FirstOrDefault()?.Strategy switch
        {
            "alpaca" => AlpacaPrompt.Instruct(instruction.Trim('\n'), null),
            _ => instruction.Trim(),
        };

    /// <summary>End-of-sequence ids: generation_config.json's (a list, possibly), config.json's, and the tokenizer's.</summary>
    public static IReadOnlyCollection<int> EosTokenIds(AxolotlConfig config, Tokenizer tokenizer)
    {
        var ids = new HashSet<int>(GenerationOptions.EosFromModelFolder(config.BaseModelConfig ?? config.BaseModel));
        if (tokenizer.EosTokenId is int eos) ids.Add(eos);
        return ids;
    }
}

/// <summary>
/// Decodes a growing token sequence into text increments. A byte-fallback character split over several tokens decodes
/// to U+FFFD until its last byte arrives, so text ending in one is held back rather than printed broken.
/// </summary>
internal sealed class StreamingDecoder(Tokenizer tokenizer)
{
    readonly List<int> _ids = [];
    int _printed;

    public string Push(int id)
    {
        _ids.Add(id);
        var text = tokenizer.Decode(_ids, skipSpecialTokens: true);
        if (text.EndsWith('\uFFFD') || text.Length < _printed) return "";
        var piece = text[_printed..];
        _printed = text.Length;
        return piece;
    }

    /// <summary>Whatever is still held back (an incomplete character stays U+FFFD, as a full decode shows it).</summary>
    public string Flush()
    {
        var text = tokenizer.Decode(_ids, skipSpecialTokens: true);
        var rest = text.Length > _printed ? text[_printed..] : "";
        _printed = text.Length;
        return rest;
    }
}
