namespace Axolotl.Config;

/// <summary>
/// Axolotl's checks and defaults for <c>reward_model: true</c> (a sequence classifier trained on Bradley-Terry pairs,
/// TRL's RewardTrainer) and <c>process_reward_model: true</c> (a token classifier trained on per-step labels, TRL's
/// PRMTrainer): the model class each needs, its num_labels, and the dataset types each reads.
/// </summary>
static class RewardModels
{
    public const string SequenceClassification = "AutoModelForSequenceClassification";
    public const string TokenClassification = "AutoModelForTokenClassification";

    /// <summary>Whether model_type names the head the run trains (a classifier with reward_model / process_reward_model).</summary>
    public static bool HeadMatches(AxolotlConfig c) =>
        (c.RewardModel && IsSequenceClassifier(c.ModelType)) || (c.ProcessRewardModel && IsTokenClassifier(c.ModelType));

    static bool IsSequenceClassifier(string? type) => type?.EndsWith("ForSequenceClassification", StringComparison.Ordinal) == true;
    static bool IsTokenClassifier(string? type) => type?.EndsWith("ForTokenClassification", StringComparison.Ordinal) == true;

    /// <summary>Configs that cannot train: <paramref name="fail"/>(key, sentence) throws naming the key's line.</summary>
    public static void CheckContradictions(AxolotlConfig c, Action<string, string> fail)
    {
        if (c.RewardModel && c.ProcessRewardModel)
            fail("process_reward_model", "reward_model and process_reward_model are both true; a run trains one of them.");
        if (!c.RewardModel && !c.ProcessRewardModel)
        {
            foreach (var d in c.Datasets.Concat(c.TestDatasets))
            {
                if (DatasetTypes.Reward.IsBradleyTerry(d.Type))
                    throw new UserError($"{d.Origin}: dataset type '{d.Type}' holds reward-model pairs; it needs reward_model: true.");
                if (DatasetTypes.Reward.IsKnown(d.Type))
                    throw new UserError($"{d.Origin}: dataset type '{d.Type}' holds per-step labels; it needs process_reward_model: true.");
            }
            return;
        }
        string key = c.RewardModel ? "reward_model" : "process_reward_model";
        if (c.Rl is { } rl) fail("rl", $"rl: {ConfigLoader.Spelling(rl)} and {key}: true are different trainers; set one of them.");
        if (c.SamplePacking) fail("sample_packing", $"sample_packing: true does not work with {key} (each sequence is scored on its own).");
        if (c.ModelType is { } type && !HeadMatches(c))
            fail("model_type", $"{key}: true trains a {(c.RewardModel ? "sequence" : "token")} classifier: model_type must be " +
                               $"{(c.RewardModel ? SequenceClassification : TokenClassification)} (or left unset), not {type}.");
        if (c.ProcessRewardModel && c.NumLabels is < 2)
            fail("num_labels", $"process_reward_model needs num_labels of at least 2 (a step is labelled 0 or 1), not {c.NumLabels}.");
        foreach (var d in c.Datasets.Concat(c.TestDatasets))
        {
            bool fits = c.RewardModel ? DatasetTypes.Reward.IsBradleyTerry(d.Type) : DatasetTypes.Reward.IsKnown(d.Type) && !DatasetTypes.Reward.IsBradleyTerry(d.Type);
            if (!fits)
                throw new UserError($"{d.Origin}: {key}: true reads {(c.RewardModel ? "chosen/rejected pairs" : "per-step labels")}: " +
                                    $"the dataset type must be {(c.RewardModel ? string.Join(" or ", DatasetTypes.Reward.BradleyTerry) : DatasetTypes.Reward.Stepwise)}, not '{d.Type ?? (d.UserDefined != null ? "a user-defined format" : "unset")}'.");
        }
    }

    /// <summary>Axolotl's defaults: the head class and num_labels, and (reward models) pad_to_sequence_len.</summary>
    public static void Resolve(AxolotlConfig c, Action<string, string> warnAbout, Action<string, string> follow)
    {
        if (c.RewardModel)
        {
            // Axolotl's trainer builder sets num_labels to 1 whatever the config says: the model outputs one score.
            if (c.NumLabels is int n && n != 1)
                warnAbout("num_labels", $"num_labels {n} is set to 1 for reward_model, as Axolotl does: a reward model outputs one score.");
            if (c.NumLabels != 1) { c.NumLabels = 1; follow("num_labels", "reward_model"); }
            if (c.ModelType is null) { c.ModelType = SequenceClassification; follow("model_type", "reward_model"); }
            if (c.PadToSequenceLen is null) { c.PadToSequenceLen = true; follow("pad_to_sequence_len", "reward_model (Axolotl's default)"); }
        }
        else if (c.ProcessRewardModel)
        {
            if (c.NumLabels is null) { c.NumLabels = 2; follow("num_labels", "process_reward_model"); }
            if (c.ModelType is null) { c.ModelType = TokenClassification; follow("model_type", "process_reward_model"); }
        }
    }
}
