using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Runtime;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Recipes;

/// <summary>What <c>axolotl inference</c> was asked for beyond the config.</summary>
internal sealed record InferenceSettings
{
    /// <summary>One prompt to answer; null reads prompts from the input instead.</summary>
    public string? Prompt { get; init; }
    public bool Chat { get; init; }
    /// <summary>Null: Axolotl's do_inference settings (<see cref="InferenceRecipe.AxolotlGeneration"/>).</summary>
    public GenerationOptions? Generation { get; init; }
}

/// <summary>
/// <c>axolotl inference</c>: base_model (+ the LoRA adapter in lora_model_dir, else output_dir, when adapter is set),
/// prompts formatted as the first dataset's prompt style, answers streamed token by token as Axolotl's do_inference does.
/// </summary>
internal static class InferenceRecipe
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

    /// <summary>Generates an answer to one formatted prompt, writing text to <paramref name="output"/> as tokens arrive.</summary>
    public static List<int> Answer(CausalLM model, Tokenizer tokenizer, string prompt, GenerationOptions options, TextWriter output,
        bool addSpecialTokens = true)
    {
        var ids = tokenizer.Encode(prompt, addSpecialTokens);
        var stream = new StreamingDecoder(tokenizer);
        var generated = Generation.Generate(model, ids, options, onToken: id =>
        {
            output.Write(stream.Push(id));
            output.Flush();
        });
        output.Write(stream.Flush());
        output.WriteLine();
        output.Flush();
        return generated;
    }

    /// <summary>
    /// Answers <see cref="InferenceSettings.Prompt"/>, or else each prompt read from <paramref name="input"/> (everything up
    /// to end of input is one prompt, as in Axolotl; an empty read ends the session).
    /// </summary>
    public static void Run(AxolotlConfig config, InferenceSettings settings, TextReader input, TextWriter output, TextWriter console,
        bool interactive, IRecipeReporter reporter)
    {
        var (model, tokenizer) = Load(config, reporter);
        var options = (settings.Generation ?? AxolotlGeneration(config)) with { EosTokenIds = EosTokenIds(config, tokenizer) };
        // --chat: the instruction as one user turn through the chat template (chat_template, else the tokenizer's), with
        // the generation prompt; the template writes its own BOS, so none is added, as apply_chat_template does.
        var template = settings.Chat ? DatasetBuilder.ResolveChatTemplate(config, null, tokenizer, reporter.Warn) : null;
        void Respond(string instruction)
        {
            if (template is null) { Answer(model, tokenizer, FormatPrompt(config, instruction), options, output); return; }
            var turn = new System.Text.Json.Nodes.JsonArray(new System.Text.Json.Nodes.JsonObject { ["role"] = "user", ["content"] = instruction.Trim('\n') });
            Answer(model, tokenizer, template.Render(turn, addGenerationPrompt: true), options, output, addSpecialTokens: false);
        }
        if (settings.Prompt is not null)
        {
            Respond(settings.Prompt);
            return;
        }
        while (true)
        {
            if (interactive) console.WriteLine("Give me an instruction (Ctrl + D to submit):");
            var instruction = input.ReadToEnd();
            if (instruction.Length == 0) return;
            Respond(instruction);
        }
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
