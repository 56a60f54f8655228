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

    /// <summary>
    /// The quickstart model in every type: f32, f16 and bf16 generate this project's greedy tokens exactly; q8_0 and
    /// q4_0 start the same and their perplexity on held-out text stays within a bound of the bf16 file's; and
    /// llama.cpp tokenizes text into the same ids.
    /// </summary>
    [LlamaCppFact]
    public void Quickstart_model_runs_the_same_in_llama_cpp()
    {
        using var dir = TestSetup.TempDir();
        var (model, tokenizer) = GgufFixtures.Load(GgufFixtures.Quickstart);
        var prompt = tokenizer.Encode("The capital of France is");
        var ours = GgufFixtures.Greedy(model, tokenizer, prompt, NewTokens);
        Assert.True(ours.Count >= 8, $"only {ours.Count} tokens generated");
        var heldOut = tokenizer.Encode(HeldOut);
        var types = new[] { GgufOutType.F32, GgufOutType.F16, GgufOutType.BF16, GgufOutType.Q8_0, GgufOutType.Q4_0 };
        var files = types.ToDictionary(t => t, t => GgufFixtures.Export(dir, GgufFixtures.Quickstart, t));
        var jobs = types.Select(t => LlamaCpp.Job(files[t], prompt, NewTokens, t is GgufOutType.F32 or GgufOutType.F16 ? null : heldOut)).ToList();
        jobs.Add(LlamaCpp.Job(files[GgufOutType.Q8_0], null, 0, text: HeldOut));
        var results = LlamaCpp.Run(jobs);
        var byType = types.Select((t, i) => (t, results[i])).ToDictionary(p => p.t, p => p.Item2);
        foreach (var type in new[] { GgufOutType.F32, GgufOutType.F16, GgufOutType.BF16 })
            Assert.True(ours.SequenceEqual(LlamaCpp.Ints(byType[type]["generated"])),
                $"{type}: llama.cpp generated [{string.Join(", ", LlamaCpp.Ints(byType[type]["generated"]))}], this project [{string.Join(", ", ours)}]");
        double reference = byType[GgufOutType.BF16]["perplexity"]!.GetValue<double>();
        foreach (var (type, matched, bound) in new[] { (GgufOutType.Q8_0, 8, 1.02), (GgufOutType.Q4_0, 2, 1.25) })
        {
            Assert.Equal(ours.Take(matched), LlamaCpp.Ints(byType[type]["generated"]).Take(matched));
            double perplexity = byType[type]["perplexity"]!.GetValue<double>();
            Assert.True(perplexity <= reference * bound, $"{type}: perplexity {perplexity:F3} vs bf16's {reference:F3} (bound ×{bound})");
        }
        Assert.Equal(tokenizer.Encode(HeldOut), LlamaCpp.Ints(results[^1]["prompt"]));
    }

    /// <summary>
    /// Every exported family (f32, and f16/bf16 for some) generates this project's greedy tokens exactly in llama.cpp;
    /// and, the other way round, a file llama.cpp's own converter wrote generates llama.cpp's tokens here (its Q/K
    /// permutation undone on load).
    /// </summary>
    [LlamaCppFact]
    public void Tiny_family_models_generate_the_same_tokens_in_llama_cpp()
    {
        using var dir = TestSetup.TempDir();
        var cases = new (string Family, GgufOutType Type)[]
        {
            ("tiny-llama", GgufOutType.F32), ("tiny-llama", GgufOutType.BF16), ("tiny-qwen2-randbias", GgufOutType.F32),
            ("tiny-qwen2-randbias", GgufOutType.F16), ("mistral", GgufOutType.F32), ("gemma", GgufOutType.F32),
            ("gemma", GgufOutType.BF16), ("phi", GgufOutType.F32), ("phi", GgufOutType.F16), ("qwen3", GgufOutType.F32),
            ("gemma2", GgufOutType.F32), ("phi3", GgufOutType.F32),
        };
        var expected = new List<(List<int> Tokens, List<float> Margins)>();
        var jobs = new List<System.Text.Json.Nodes.JsonObject>();
        var folders = new Dictionary<string, string>();
        foreach (var (family, type) in cases)
        {
            if (!folders.TryGetValue(family, out var folder)) folders[family] = folder = GgufFixtures.Folder(dir, family);
            var (model, tokenizer) = GgufFixtures.Load(folder);
            expected.Add(GgufFixtures.GreedyWithMargins(model, tokenizer, ReferencePrompt, NewTokens));
            jobs.Add(LlamaCpp.Job(GgufFixtures.Export(dir, folder, type), ReferencePrompt, NewTokens));
        }
        var converted = TestSetup.Data("gguf", "llama-2-tiny-random.gguf");
        int[] prompt = [1, 15043, 3186, 29892];
        jobs.Add(LlamaCpp.Job(converted, prompt, 16));
        var results = LlamaCpp.Run(jobs);
        // Random tiny models can meet a near-tie, where fp32 summation order alone may pick either token: the two
        // must agree at least up to the first such step.
        var mismatches = new List<string>();
        for (int i = 0; i < cases.Length; i++)
        {
            var (tokens, margins) = expected[i];
            var theirs = LlamaCpp.Ints(results[i]["generated"]);
            int decisive = GgufFixtures.Decisive(margins);
            int firstDifference = Enumerable.Range(0, Math.Max(tokens.Count, theirs.Count))
                .FirstOrDefault(j => j >= tokens.Count || j >= theirs.Count || tokens[j] != theirs[j], -1);
            if (firstDifference >= 0 && firstDifference < decisive)
                mismatches.Add($"{cases[i].Family} {cases[i].Type}: ours [{string.Join(", ", tokens)}], llama.cpp [{string.Join(", ", theirs)}], " +
                               $"decisive steps {decisive}, margins [{string.Join(", ", margins.Select(m => m.ToString("G3")))}]");
        }
        Assert.True(mismatches.Count == 0, string.Join("\n", mismatches));

        var reread = CausalLM.Create(DecoderConfig.FromFolder(converted), ScalarType.Float32, ScalarType.Float32);
        reread.LoadWeights(converted);
        var ours = Generation.Generate(reread, prompt, new GenerationOptions { MaxNewTokens = 16, EosTokenIds = [2] });
        Assert.Equal(LlamaCpp.Ints(results[^1]["generated"]), ours);
    }
}
