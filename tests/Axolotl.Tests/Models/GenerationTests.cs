using System.Text.Json.Nodes;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>Generation with a KV cache against recomputing the whole sequence each step, and the logits processors.</summary>
public class GenerationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static readonly int[] Prompt = [1, 5, 9, 60, 17];

    /// <summary>Every family path the cache touches: GQA, biases, q/k norms, fused projections, both window kinds, softcaps.</summary>
    public static TheoryData<string> Families => new() { "tiny-llama", "tiny-qwen2-randbias", "mistral", "gemma", "phi", "qwen3", "gemma2", "phi3", "llama3-rope", "mixtral", "qwen2_moe", "qwen3_moe", "gemma3" };

    static CausalLM Load(string family, TempDir dir)
    {
        string path = family switch
        {
            "tiny-llama" or "tiny-qwen2-randbias" => TestSetup.Data("reference", "models", family),
            "mistral" or "gemma" or "phi" or "mixtral" or "qwen2_moe" => TestSetup.Data("reference", "families", family, "model"),
            "qwen3_moe" => MoeFamilyTests.BuildMoe(dir, MoeFamilyTests.Qwen3Moe()),
            "gemma3" => NewFamilyTests.Build(dir, MoeFamilyTests.Gemma3()),
            "qwen3" => NewFamilyTests.Build(dir, NewFamilyTests.Qwen3()),
            "gemma2" => NewFamilyTests.Build(dir, NewFamilyTests.Gemma2()),
            "phi3" => NewFamilyTests.Build(dir, NewFamilyTests.Phi3()),
            _ => NewFamilyTests.Build(dir, Llama3Rope()),
        };
        return CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32);
    }

    static JsonObject Llama3Rope()
    {
        var c = NewFamilyTests.Llama();
        c["rope_scaling"] = new JsonObject
        {
            ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
            ["original_max_position_embeddings"] = 16,
        };
        return c;
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Cached_greedy_generation_equals_recomputation_token_for_token(string family)
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load(family, dir);
        var options = new GenerationOptions { MaxNewTokens = 12 };
        var cachedLogits = new List<Tensor>();
        var cached = Generation.Generate(model, Prompt, options, onLogits: l => cachedLogits.Add(l.clone().DetachFromDisposeScope()));
        var fullLogits = new List<Tensor>();
        var uncached = Generation.Generate(model, Prompt, options with { UseCache = false }, onLogits: l => fullLogits.Add(l.clone().DetachFromDisposeScope()));
        Assert.Equal(uncached, cached);
        Assert.Equal(12, cached.Count);
        double worst = cachedLogits.Zip(fullLogits).Max(p => (p.First - p.Second).abs().max().item<float>());
        output.WriteLine($"{family}: {string.Join(" ", cached)}; max |cached - full| logits = {worst}");
        Assert.True(worst < 1e-5, $"max |cached - full| = {worst}");

        // And the recomputation is the argmax continuation of plain forward passes.
        using var _ = no_grad();
        var sequence = Prompt.Select(i => (long)i).ToList();
        foreach (var token in uncached)
        {
            var logits = model.forward(tensor(sequence.ToArray()).unsqueeze(0));
            Assert.Equal(token, (int)logits[0, -1].argmax().item<long>());
            sequence.Add(token);
        }
        foreach (var t in cachedLogits.Concat(fullLogits)) t.Dispose();
    }

    [Fact]
    public void Stops_at_any_eos_id_and_keeps_it()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load("tiny-llama", dir);
        var free = Generation.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 8 });
        // Declare the third generated token an end-of-sequence id (among others): generation ends right there.
        var stopped = Generation.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [9999, free[2]] });
        int first = free.IndexOf(free[2]);
        Assert.Equal(free.Take(first + 1), stopped);
    }

    [Fact]
    public void Sampling_is_deterministic_given_the_seed_and_varies_with_it()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = Load("tiny-llama", dir);
        var options = new GenerationOptions { MaxNewTokens = 16, DoSample = true, Temperature = 1.5, TopK = 0, Seed = 3 };
        var a = Generation.Generate(model, Prompt, options);
        Assert.Equal(a, Generation.Generate(model, Prompt, options));
        var others = Enumerable.Range(4, 4).Select(s => Generation.Generate(model, Prompt, options with { Seed = (ulong)s })).ToList();
        Assert.Contains(others, o => !o.SequenceEqual(a));
        // Cached and uncached sampling draw the same tokens.
        Assert.Equal(a, Generation.Generate(model, Prompt, options with { UseCache = false }));
    }

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens()
    {
        using var scope = NewDisposeScope();
        var logits = tensor(new float[] { 2f, -2f, 4f, -1f, 0.5f }).unsqueeze(0);
        var scores = Generation.Process(logits, [0, 1, 1], new GenerationOptions { RepetitionPenalty = 2.0 });
        Assert.Equal(new[] { 1f, -4f, 4f, -1f, 0.5f }, scores[0].data<float>().ToArray());
    }

    [Fact]
    public void Top_k_and_top_p_keep_what_transformers_keeps()
    {
        using var scope = NewDisposeScope();
        // probabilities ∝ exp(logits): 0.5, 0.25, 0.125, 0.0625, 0.0625
        var logits = tensor(new[] { 3f, 2f, 1f, 0f, 0f }.Select(x => x * MathF.Log(2)).ToArray()).unsqueeze(0);
        bool[] Kept(GenerationOptions o) => Generation.Process(logits, [], o with { DoSample = true })[0].isfinite().data<bool>().ToArray();
        Assert.Equal(new[] { true, true, false, false, false }, Kept(new GenerationOptions { TopK = 2 }));
        // top_p 0.8: the smallest tokens whose mass is at most 0.2 go (0.0625 + 0.0625 = 0.125; + 0.125 = 0.25 > 0.2).
        Assert.Equal(new[] { true, true, true, false, false }, Kept(new GenerationOptions { TopK = 0, TopP = 0.8 }));
        // Even a tiny top_p keeps the most likely token.
        Assert.Equal(new[] { true, false, false, false, false }, Kept(new GenerationOptions { TopK = 0, TopP = 0.01 }));
        // Temperature divides before filtering.
        var warmed = Generation.Process(logits, [], new GenerationOptions { DoSample = true, TopK = 0, Temperature = 2 });
        Assert.Equal(3 * MathF.Log(2) / 2, warmed[0, 0].item<float>(), 5);
    }

    [Fact]
    public void Eos_ids_come_from_generation_config_lists()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["generation_config.json"], """{"eos_token_id": [128001, 128009]}""");
        Assert.Equal([128001, 128009], GenerationOptions.EosFromModelFolder(dir.Path));
        File.WriteAllText(dir["generation_config.json"], """{"bos_token_id": 1}""");
        File.WriteAllText(dir["config.json"], """{"eos_token_id": 2}""");
        Assert.Equal([2], GenerationOptions.EosFromModelFolder(dir.Path));
    }
}
