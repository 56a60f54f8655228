using Axolotl.Config;

namespace Axolotl.Hub;

/// <summary>
/// Turns the config's model and dataset locations into local paths, once, before any recipe reads them: an existing
/// local path wins; else a value shaped like a Hub repo id is looked up in the HF cache; else a UserError.
/// </summary>
public static class PathResolver
{
    /// <summary>Rewrites the paths in <paramref name="config"/>; returns one line per value taken from the cache.</summary>
    public static List<string> Resolve(AxolotlConfig config, HfCache cache)
    {
        var notes = new List<string>();
        string? One(string key, string? value, string repoType, string? revision)
        {
            if (value == null || Path.Exists(value)) return value;
            string why = $"that path does not exist";
            if (HfCache.LooksLikeRepoId(value))
            {
                if (cache.Resolve(value, repoType, revision, out why) is { } snapshot)
                {
                    notes.Add($"{key}: {value}{(revision != null ? $"@{revision}" : "")} → {snapshot}");
                    return snapshot;
                }
                why = $"it is not a local path, and {why}; " + (cache.Offline
                    ? "HF_HUB_OFFLINE is set, and downloading is not implemented yet anyway"
                    : $"downloading from the Hub is not implemented yet (fetch it with `huggingface-cli download {(repoType == "dataset" ? "--repo-type dataset " : "")}{value}`, or set HF_HUB_CACHE or HF_HOME)");
            }
            throw new UserError($"{key} '{value}': {why}.");
        }
        // Axolotl passes revision_of_model to the config and tokenizer loads as well as the weights.
        var written = config.BaseModel;
        config.BaseModel = One("base_model", config.BaseModel, "model", config.RevisionOfModel)!;
        if (config.BaseModel != written) config.BaseModelRepoId = written;
        config.BaseModelConfig = One("base_model_config", config.BaseModelConfig, "model", config.RevisionOfModel);
        config.TokenizerConfig = One("tokenizer_config", config.TokenizerConfig, "model", config.RevisionOfModel);
        config.LoraModelDir = One("lora_model_dir", config.LoraModelDir, "model", null);
        for (int i = 0; i < config.Datasets.Count; i++)
            config.Datasets[i].Path = One($"datasets[{i}].path", config.Datasets[i].Path, "dataset", config.Datasets[i].Revision)!;
        return notes;
    }
}
