using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

/// <summary>transformers' GenerationConfig fields that we implement, with its defaults.</summary>
internal sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 20;
    /// <summary>False: greedy (argmax), temperature/top_k/top_p unused, as in transformers.</summary>
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    /// <summary>0 turns top-k filtering off.</summary>
    public int TopK { get; init; } = 50;
    public double TopP { get; init; } = 1.0;
    /// <summary>HF's CTRL-style penalty on every token already in the sequence (prompt included); 1 is none.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Generation stops after any of these (generation_config.json's eos_token_id may be a list).</summary>
    public IReadOnlyCollection<int> EosTokenIds { get; init; } = [];
    public ulong Seed { get; init; } = 42;
    /// <summary>Reuse past keys and values; false recomputes the whole sequence each step (for testing the cache).</summary>
    public bool UseCache { get; init; } = true;

    /// <summary>eos_token_id of a model folder's generation_config.json, else config.json's; empty when neither says.</summary>
    public static IReadOnlyCollection<int> EosFromModelFolder(string modelDir)
    {
        foreach (var name in new[] { "generation_config.json", "config.json" })
        {
            var path = Path.Combine(modelDir, name);
            if (!File.Exists(path)) continue;
            try
            {
                switch (IO.JsonFiles.ReadObject(path)["eos_token_id"])
                {
                    case JsonArray list: return list.Select(x => x!.GetValue<int>()).ToList();
                    case JsonValue one: return [one.GetValue<int>()];
                }
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new UserError($"{path}: eos_token_id must be a token id or a list of them.");
            }
        }
        return [];
    }
}

/// <summary>Autoregressive decoding over <see cref="CausalLM"/>: transformers' generate() for one sequence.</summary>
internal static class Generation
{
    /// <summary>
    /// Generates up to MaxNewTokens after <paramref name="prompt"/>; returns the new tokens (an EOS that stopped it
    /// included). <paramref name="onToken"/> sees each token as it is chosen; <paramref name="onLogits"/> each step's raw
    /// next-token logits [1, vocab] before any processing (valid only during the call).
    /// </summary>
    public static List<int> Generate(CausalLM model, IReadOnlyList<int> prompt, GenerationOptions options,
        Action<int>? onToken = null, Action<Tensor>? onLogits = null)
    {
        if (prompt.Count == 0) throw new UserError("generation needs at least one prompt token.");
        bool wasTraining = model.training;
        model.eval();
        using var noGrad = no_grad();
        using var cache = options.UseCache ? model.NewCache() : null;
        using var generator = options.DoSample ? new Generator(options.Seed) : null;
        var sequence = prompt.ToList();
        var generated = new List<int>();
        try
        {
            for (int step = 0; step < options.MaxNewTokens; step++)
            {
                using var scope = NewDisposeScope();
                // With a cache only the newest token goes in; its keys and values join those already cached.
                var input = cache is null || step == 0 ? sequence : sequence.GetRange(sequence.Count - 1, 1);
                var logits = model.NextTokenLogits(tensor(input.Select(i => (long)i).ToArray(), device: model.Device).unsqueeze(0), cache);
                onLogits?.Invoke(logits);
                var scores = Process(logits, sequence, options);
                int next = options.DoSample
                    // Drawn on the host with a CPU generator: the same seed samples the same tokens on any device.
                    ? (int)F.softmax(scores, -1).cpu().multinomial(1, false, generator).item<long>()
                    : (int)scores.argmax(-1).item<long>();
                sequence.Add(next);
                generated.Add(next);
                onToken?.Invoke(next);
                if (options.EosTokenIds.Contains(next)) break;
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        return generated;
    }

    /// <summary>transformers' logits processors in its order: repetition penalty, then temperature, top-k, top-p when sampling.</summary>
    public static Tensor Process(Tensor logits, IReadOnlyList<int> sequence, GenerationOptions o)
    {
        var scores = logits;
        if (o.RepetitionPenalty != 1.0)
        {
            var seen = tensor(sequence.Distinct().Select(i => (long)i).ToArray(), device: scores.device).unsqueeze(0);
            var picked = scores.gather(1, seen);
            // Dividing a negative logit would raise it, so negative ones are multiplied instead.
            picked = where(picked < 0, picked * o.RepetitionPenalty, picked / o.RepetitionPenalty);
            scores = scores.scatter(1, seen, picked);
        }
        if (!o.DoSample) return scores;
        if (o.Temperature <= 0) throw new UserError($"temperature must be positive when sampling (got {o.Temperature}); use greedy decoding instead.");
        if (o.Temperature != 1.0) scores = scores / o.Temperature;
        if (o.TopK > 0)
        {
            long k = Math.Min(o.TopK, scores.shape[^1]);
            var (top, _) = scores.topk((int)k);
            var kth = top.narrow(-1, k - 1, 1);
            scores = scores.masked_fill(scores < kth, double.NegativeInfinity);
        }
        if (o.TopP < 1.0)
        {
            // Drop the least likely tokens whose probabilities sum to at most 1 - top_p; the most likely one always stays.
            var (sorted, order) = scores.sort(-1, descending: false);
            var cumulative = F.softmax(sorted, -1).cumsum(-1);
            var remove = cumulative <= 1 - o.TopP;
            remove.index_fill_(-1, tensor(new long[] { remove.shape[^1] - 1 }, device: remove.device), false);
            scores = scores.masked_fill(remove.scatter(-1, order, remove), double.NegativeInfinity);
        }
        return scores;
    }
}
