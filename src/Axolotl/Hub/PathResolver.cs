using Axolotl.Config;

namespace Axolotl.Hub;

/// <summary>
/// Turns the config's model and dataset locations into local paths, once, before any recipe reads them: an existing
/// local path wins; else a value shaped like a Hub repo id is looked up in the HF cache, and downloaded into it when
/// missing (or when the cached snapshot lacks files the value is needed for); else a UserError.
/// </summary>
internal static class PathResolver
{
    /// <summary>Rewrites the paths in <paramref name="config"/>; returns one line per value taken from the cache or the Hub.</summary>
    public static List<string> Resolve(AxolotlConfig config, HubClient hub)
    {
        var cache = hub.Cache;
        var notes = new List<string>();
        string? One(string key, string? value, string repoType, string? revision, HubWant want)
        {
            if (value == null || Path.Exists(value)) return value;
            config.AsWritten[key] = value;
            string why = $"that path does not exist";
            if (HfCache.LooksLikeRepoId(value))
            {
                var snapshot = cache.Resolve(value, repoType, revision, out why);
                // Cache first, as huggingface_hub offline: a complete snapshot costs no request.
                if (snapshot != null && (cache.Offline || HubFiles.IsComplete(want, snapshot)))
                {
                    notes.Add($"{key}: {value}{(revision != null ? $"@{revision}" : "")} → {snapshot}");
                    return snapshot;
                }
                if (!cache.Offline)
                {
                    snapshot = hub.Download(value, repoType, revision, want);
                    notes.Add($"{key}: {value}{(revision != null ? $"@{revision}" : "")} → {snapshot} (downloaded from {hub.Endpoint})");
                    return snapshot;
                }
                why = $"it is not a local path, and {why}; HF_HUB_OFFLINE is set, so nothing is downloaded (unset it, or run " +
                      $"`axolotl download {(repoType == "dataset" ? "--repo-type dataset " : "")}{value}` while online)";
            }
            throw new UserError($"{key} '{value}': {why}.");
        }
        // Axolotl passes revision_of_model to the config and tokenizer loads as well as the weights.
        var written = config.BaseModel;
        config.BaseModel = One("base_model", config.BaseModel, "model", config.RevisionOfModel, HubWant.Model)!;
        if (config.BaseModel != written) config.BaseModelRepoId = written;
        config.BaseModelConfig = One("base_model_config", config.BaseModelConfig, "model", config.RevisionOfModel, HubWant.Config);
        config.TokenizerConfig = One("tokenizer_config", config.TokenizerConfig, "model", config.RevisionOfModel, HubWant.Tokenizer);
        config.LoraModelDir = One("lora_model_dir", config.LoraModelDir, "model", null, HubWant.Adapter);
        for (int i = 0; i < config.Datasets.Count; i++)
            config.Datasets[i].Path = One($"datasets[{i}].path", config.Datasets[i].Path, "dataset", config.Datasets[i].Revision, HubWant.Dataset)!;
        // Only the first entry is streamed, so only it is fetched.
        if (config.PretrainingDataset.Count > 0)
            config.PretrainingDataset[0].Path = One("pretraining_dataset[0].path", config.PretrainingDataset[0].Path, "dataset", config.PretrainingDataset[0].Revision, HubWant.Dataset)!;
        return notes;
    }
}
