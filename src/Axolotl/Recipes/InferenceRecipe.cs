using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Inference;
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
    /// <summary>Null: Axolotl's do_inference settings (<see cref="InferenceSetup.AxolotlGeneration"/>).</summary>
    public GenerationOptions? Generation { get; init; }
}

/// <summary>
/// <c>axolotl inference</c>: base_model (+ the LoRA adapter in lora_model_dir, else output_dir, when adapter is set),
/// prompts formatted as the first dataset's prompt style, answers streamed token by token as Axolotl's do_inference does.
/// </summary>
internal static class InferenceRecipe
{
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
        var (model, tokenizer) = InferenceSetup.Load(config, reporter);
        var options = (settings.Generation ?? InferenceSetup.AxolotlGeneration(config)) with { EosTokenIds = InferenceSetup.EosTokenIds(config, tokenizer) };
        // --chat: the instruction as one user turn through the chat template (chat_template, else the tokenizer's), with
        // the generation prompt; the template writes its own BOS, so none is added, as apply_chat_template does.
        var template = settings.Chat ? DatasetBuilder.ResolveChatTemplate(config, null, tokenizer, reporter.Warn) : null;
        void Respond(string instruction)
        {
            if (template is null) { Answer(model, tokenizer, InferenceSetup.FormatPrompt(config, instruction), options, output); return; }
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
