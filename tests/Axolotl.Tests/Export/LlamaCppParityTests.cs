using Axolotl.Export;
using Axolotl.Models;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Export;

/// <summary>
/// Exported files run by llama.cpp itself (node-llama-cpp 3.21.1's prebuilt CPU build, tools/llama-cpp-check): greedy
/// tokens must equal this project's greedy generation, token for token, for the float types; quantized files must
/// start the same and stay close in perplexity. Skipped, with the reason, where node or the tool is not installed.
/// </summary>
public class LlamaCppParityTests
{
    const int NewTokens = 32;
    static readonly int[] ReferencePrompt = [1, 5, 9, 200, 17, 3, 88, 400];

    /// <summary>Text the quickstart model never saw (written for this test), for perplexity.</summary>
    const string HeldOut = "The small town held its annual harvest fair on the first weekend of October. Farmers brought " +
        "pumpkins, apples and jars of honey, and children ran between the stalls while a band played on the square. " +
        "In the evening the mayor thanked the volunteers and announced that the fair had raised money for the new library.";

    [LlamaCppTheory]
    [InlineData(GgufOutType.F32)]
    [InlineData(GgufOutType.F16)]
    [InlineData(GgufOutType.BF16)]
    public void Quickstart_model_generates_the_same_tokens_in_llama_cpp(GgufOutType type)
    {
        using var dir = TestSetup.TempDir();
        var path = GgufFixtures.Export(dir, GgufFixtures.Quickstart, type);
        var (model, tokenizer) = GgufFixtures.Load(GgufFixtures.Quickstart);
        var prompt = tokenizer.Encode("The capital of France is");
        var ours = GgufFixtures.Greedy(model, tokenizer, prompt, NewTokens);
        var theirs = LlamaCpp.Run(path, prompt, NewTokens);
        Assert.Equal(ours, LlamaCpp.Ints(theirs["generated"]));
        Assert.True(ours.Count >= 8, $"only {ours.Count} tokens generated");
    }

    [LlamaCppTheory]
    [InlineData("tiny-llama", GgufOutType.F32)]
    [InlineData("tiny-llama", GgufOutType.BF16)]
    [InlineData("tiny-qwen2-randbias", GgufOutType.F32)]
    [InlineData("tiny-qwen2-randbias", GgufOutType.F16)]
    [InlineData("mistral", GgufOutType.F32)]
    [InlineData("gemma", GgufOutType.F32)]
    [InlineData("gemma", GgufOutType.BF16)]
    [InlineData("phi", GgufOutType.F32)]
    [InlineData("phi", GgufOutType.F16)]
    [InlineData("qwen3", GgufOutType.F32)]
    [InlineData("gemma2", GgufOutType.F32)]
    [InlineData("phi3", GgufOutType.F32)]
    public void Tiny_family_models_generate_the_same_tokens_in_llama_cpp(string family, GgufOutType type)
    {
        using var dir = TestSetup.TempDir();
        var folder = GgufFixtures.Folder(dir, family);
        var path = GgufFixtures.Export(dir, folder, type);
        var (model, tokenizer) = GgufFixtures.Load(folder);
        var ours = GgufFixtures.Greedy(model, tokenizer, ReferencePrompt, NewTokens);
        var theirs = LlamaCpp.Ints(LlamaCpp.Run(path, ReferencePrompt, NewTokens)["generated"]);
        Assert.Equal(ours, theirs);
    }

    [LlamaCppFact]
    public void Quantized_files_start_the_same_and_stay_close_in_perplexity()
    {
        using var dir = TestSetup.TempDir();
        var (model, tokenizer) = GgufFixtures.Load(GgufFixtures.Quickstart);
        var prompt = tokenizer.Encode("The capital of France is");
        var ours = GgufFixtures.Greedy(model, tokenizer, prompt, NewTokens);
        var heldOut = tokenizer.Encode(HeldOut);
        var bf16 = LlamaCpp.Run(GgufFixtures.Export(dir, GgufFixtures.Quickstart, GgufOutType.BF16), prompt, 0, heldOut);
        double reference = bf16["perplexity"]!.GetValue<double>();
        foreach (var (type, matched, bound) in new[] { (GgufOutType.Q8_0, 8, 1.02), (GgufOutType.Q4_0, 2, 1.25) })
        {
            var result = LlamaCpp.Run(GgufFixtures.Export(dir, GgufFixtures.Quickstart, type), prompt, NewTokens, heldOut);
            Assert.Equal(ours.Take(matched), LlamaCpp.Ints(result["generated"]).Take(matched));
            double perplexity = result["perplexity"]!.GetValue<double>();
            Assert.True(perplexity <= reference * bound, $"{type}: perplexity {perplexity:F3} vs bf16's {reference:F3} (bound ×{bound})");
        }
    }

    [LlamaCppFact]
    public void Llama_cpp_tokenizes_a_prompt_as_this_project_does()
    {
        using var dir = TestSetup.TempDir();
        var path = GgufFixtures.Export(dir, GgufFixtures.Quickstart, GgufOutType.Q8_0);
        var tokenizer = Tokenizer.FromFolder(GgufFixtures.Quickstart);
        var result = LlamaCpp.RunPrompt(path, HeldOut);
        Assert.Equal(tokenizer.Encode(HeldOut), LlamaCpp.Ints(result["prompt"]));
    }

    [LlamaCppFact]
    public void A_file_from_llama_cpps_converter_generates_the_same_tokens_here()
    {
        // The reverse direction: read a GGUF llama.cpp's converter wrote (its Q/K permutation undone on load).
        var path = TestSetup.Data("gguf", "llama-2-tiny-random.gguf");
        var model = CausalLM.Create(DecoderConfig.FromFolder(path), ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(path);
        int[] prompt = [1, 15043, 3186, 29892];
        var ours = Generation.Generate(model, prompt, new GenerationOptions { MaxNewTokens = 16, EosTokenIds = [2] });
        Assert.Equal(ours, LlamaCpp.Ints(LlamaCpp.Run(path, prompt, 16)["generated"]));
    }
}
