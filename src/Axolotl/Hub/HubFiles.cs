using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Axolotl.Data;

namespace Axolotl.Hub;

/// <summary>What a Hub id is needed for, which decides the files fetched for it.</summary>
internal enum HubWant
{
    /// <summary>base_model: config, tokenizer and the safetensors weights (one file or the shards its index names).</summary>
    Model,
    /// <summary>base_model_config: config.json and generation_config.json.</summary>
    Config,
    /// <summary>tokenizer_config: the tokenizer files.</summary>
    Tokenizer,
    /// <summary>lora_model_dir: a PEFT adapter.</summary>
    Adapter,
    /// <summary>A dataset's path: the train data files, as RowReader picks them from a folder.</summary>
    Dataset,
    /// <summary>`axolotl download` without --include: whatever of the above the repo has, without insisting on weights.</summary>
    Everything,
}

/// <summary>
/// Only the files a run needs are fetched: a repo often carries the same weights in several formats
/// (pytorch_model.bin, onnx, gguf) that would multiply the download.
/// </summary>
internal static partial class HubFiles
{
    static readonly string[] ConfigFiles = ["config.json", "generation_config.json"];
    static readonly string[] TokenizerFiles =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
        "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
    ];
    static readonly string[] AdapterFiles = ["adapter_config.json", "adapter_model.safetensors"];
    const string Weights = "model.safetensors", WeightsIndex = "model.safetensors.index.json";

    /// <summary>
    /// The files of <paramref name="listing"/> to fetch for <paramref name="want"/>; <paramref name="fetch"/> downloads
    /// one file and returns its local path (the shard index has to be read to know the shards).
    /// </summary>
    public static List<string> Select(HubWant want, string repo, IReadOnlyList<string> listing, Func<string, string> fetch)
    {
        var present = listing.ToHashSet();
        IEnumerable<string> Named(IEnumerable<string> names) => names.Where(present.Contains);
        List<string> WeightFiles(bool required)
        {
            if (present.Contains(Weights)) return [Weights];
            if (present.Contains(WeightsIndex)) return [WeightsIndex, .. ShardsOf(fetch(WeightsIndex))];
            if (!required) return [];
            var other = listing.Where(f => f.EndsWith(".bin") || f.EndsWith(".pt") || f.EndsWith(".gguf") || f.EndsWith(".h5")).Take(3).ToList();
            throw new UserError($"{repo} has no {Weights} or {WeightsIndex}" + (other.Count > 0 ? $" (only {string.Join(", ", other)})" : "") +
                "; Axolotl.NET reads safetensors weights only.");
        }
        var chosen = want switch
        {
            HubWant.Model => [.. Named(ConfigFiles), .. Named(TokenizerFiles), .. WeightFiles(required: true)],
            HubWant.Config => Named(ConfigFiles).ToList(),
            HubWant.Tokenizer => Named(TokenizerFiles).ToList(),
            HubWant.Adapter => Named(AdapterFiles).ToList(),
            HubWant.Dataset => RowReader.DataFiles(listing),
            _ => [.. Named(ConfigFiles), .. Named(TokenizerFiles), .. Named(AdapterFiles), .. WeightFiles(required: false)],
        };
        if (chosen.Count == 0)
            throw new UserError($"{repo} has none of the files " + want switch
            {
                HubWant.Dataset => "a dataset is read from (data files besides README, LICENSE and dotfiles)",
                HubWant.Config => "base_model_config needs (config.json)",
                HubWant.Tokenizer => "tokenizer_config needs (tokenizer.json, tokenizer_config.json, ...)",
                HubWant.Adapter => "lora_model_dir needs (adapter_config.json, adapter_model.safetensors)",
                _ => "Axolotl.NET reads (config, tokenizer, adapter or safetensors files; pick others with --include)",
            } + $"; it holds: {string.Join(", ", listing.Take(8))}{(listing.Count > 8 ? $" and {listing.Count - 8} more" : "")}.");
        return chosen.Distinct().ToList();
    }

    /// <summary>
    /// Whether a cached snapshot already holds what <paramref name="want"/> needs. A snapshot can be partial: Python
    /// users fetch single files (hf_hub_download config.json), and that must not hide missing weights.
    /// </summary>
    public static bool IsComplete(HubWant want, string snapshot)
    {
        bool Has(string name) => File.Exists(Path.Combine(snapshot, name));
        bool HasWeights() => Has(Weights) || Has(WeightsIndex) && ShardsOf(Path.Combine(snapshot, WeightsIndex)).All(Has);
        return want switch
        {
            HubWant.Model => Has("config.json") && HasWeights(),
            HubWant.Config => Has("config.json"),
            HubWant.Tokenizer => Has("tokenizer.json"),
            HubWant.Adapter => AdapterFiles.All(Has),
            _ => true,
        };
    }

    /// <summary>The shard files named in a model.safetensors.index.json's weight_map.</summary>
    static IEnumerable<string> ShardsOf(string indexPath)
    {
        try
        {
            return (JsonNode.Parse(File.ReadAllText(indexPath))?["weight_map"]?.AsObject()
                    ?? throw new UserError($"{indexPath} has no weight_map."))
                .Select(kv => kv.Value!.GetValue<string>()).Distinct().Order(StringComparer.Ordinal).ToList();
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException)
        {
            throw new UserError($"{indexPath} is not a valid safetensors index ({e.Message.Split('.')[0]}).");
        }
    }

    /// <summary>
    /// A filter from glob patterns as huggingface_hub's allow_patterns reads them (fnmatch: '*' crosses '/'; a pattern
    /// ending in '/' means everything under that folder).
    /// </summary>
    public static Func<string, bool> Globs(IReadOnlyList<string> patterns)
    {
        var regexes = patterns.Select(p => new Regex("^" + string.Concat((p.EndsWith('/') ? p + "*" : p).Select(c => c switch
        {
            '*' => ".*",
            '?' => ".",
            _ => Regex.Escape(c.ToString()),
        })) + "$", RegexOptions.Singleline)).ToList();
        return name => regexes.Any(r => r.IsMatch(name));
    }
}
