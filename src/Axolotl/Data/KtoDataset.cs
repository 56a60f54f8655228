using Axolotl.Config;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>
/// Axolotl's prepare_preference_datasets for <c>rl: kto</c>: read each dataset, apply its KTO type, handle length,
/// tokenize as TRL's KTOTrainer does, shuffle with the seed, split off the validation examples. An example is stored as
/// two consecutive examples so the cache and the batches reuse what SFT examples use: prompt+completion with labels on
/// the completion, then a one-token marker row holding the label (1 desirable, 0 undesirable).
/// </summary>
internal static class KtoDataset
{
    public static PreparedDataset Build(AxolotlConfig config, Func<Tokenizer> tokenizer, Action<int>? progress = null, Action<string>? warn = null)
    {
        var bad = new BadRows(config.BadRows == "skip");
        var (examples, rowsRead, dropped) = Read(config.Datasets, "train", config, tokenizer, bad, progress, warn);
        if (config.ShuffleMergedDatasets) examples = DatasetBuilder.ShuffleAsDatasets(examples, config.Seed);
        List<KtoExample> eval;
        if (config.TestDatasets.Count > 0) eval = Read(config.TestDatasets, "test", config, tokenizer, bad, null, warn).Examples;
        else
        {
            int count = config.ValSetSize <= 0 ? 0 : config.ValSetSize < 1 ? (int)Math.Ceiling(config.ValSetSize * examples.Count) : (int)config.ValSetSize;
            if (count >= examples.Count && count > 0)
                throw new UserError($"val_set_size {config.ValSetSize} takes {count} of the {examples.Count} KTO examples, leaving none to train on.");
            eval = examples.GetRange(examples.Count - count, count);
            examples.RemoveRange(examples.Count - count, count);
        }
        if (examples.Count == 0)
            throw new UserError($"no KTO examples are left: {dropped} were longer than sequence_len {config.SequenceLen}" +
                                (bad.Total > 0 ? $", {bad.Total} rows were skipped as bad ({bad.Summary()})" : "") + "; raise sequence_len or check the data.");
        WarnOnImbalance(examples, config.KtoDesirableWeight is double d and not 0 ? d : 1, config.KtoUndesirableWeight is double u and not 0 ? u : 1, warn);
        return new PreparedDataset(Flatten(examples), rowsRead, dropped, 0) { Eval = Flatten(eval), SkippedRows = bad.Counts };
    }

    /// <summary>Examples as consecutive rows: prompt+completion (labels on the completion), then the label's marker row.</summary>
    public static List<Example> Flatten(IEnumerable<KtoExample> examples) =>
        examples.SelectMany(e => new[]
        {
            new Example([.. e.Prompt, .. e.Completion], [.. Enumerable.Repeat(Example.IgnoreIndex, e.Prompt.Length), .. e.Completion]),
            new Example([e.Label ? 1 : 0], [Example.IgnoreIndex]),
        }).ToList();

    /// <summary>The examples back from <see cref="Flatten"/>'s rows.</summary>
    public static List<KtoExample> Unflatten(IReadOnlyList<Example> rows)
    {
        if (rows.Count % 2 != 0) throw new ArgumentException("KTO rows come in example/label pairs", nameof(rows));
        var result = new List<KtoExample>(rows.Count / 2);
        for (int i = 0; i < rows.Count; i += 2)
        {
            var e = rows[i];
            int promptLength = Array.FindIndex(e.Labels, l => l != Example.IgnoreIndex);
            if (promptLength < 0) promptLength = e.Labels.Length;
            result.Add(new KtoExample(e.InputIds[..promptLength], e.InputIds[promptLength..], rows[i + 1].InputIds[0] == 1));
        }
        return result;
    }

    /// <summary>
    /// TRL's check on the training set: with unequal counts, the weights should satisfy Eq. (8) of the KTO paper
    /// (λ_D·n_D / λ_U·n_U in [1, 4/3]); otherwise it recommends a range for either weight.
    /// </summary>
    static void WarnOnImbalance(List<KtoExample> examples, double desirableWeight, double undesirableWeight, Action<string>? warn)
    {
        int desirable = Math.Max(examples.Count(e => e.Label), 1);
        int undesirable = Math.Max(examples.Count - desirable, 1);
        if (desirable == undesirable) return;
        double dLow = Math.Round(undesirable * undesirableWeight / desirable, 2), dHigh = Math.Round(undesirable * undesirableWeight / desirable * 1.33, 2);
        double uLow = Math.Round(desirable * desirableWeight / undesirable / 1.33, 2), uHigh = Math.Round(desirable * desirableWeight / undesirable, 2);
        if ((dLow <= desirableWeight && desirableWeight <= dHigh) || (uLow <= undesirableWeight && undesirableWeight <= uHigh)) return;
        warn?.Invoke($"the KTO data has {desirable} desirable and {undesirable} undesirable examples, but the loss weights are not in the " +
                     $"recommended range: set EITHER kto_desirable_weight in [{dLow}, {dHigh}] OR kto_undesirable_weight in [{uLow}, {uHigh}] (not both).");
    }

    static (List<KtoExample> Examples, int RowsRead, int Dropped) Read(IReadOnlyList<DatasetConfig> datasets, string split, AxolotlConfig config,
        Func<Tokenizer> tokenizer, BadRows bad, Action<int>? progress, Action<string>? warn) =>
        PreferenceDataset.ReadRows<KtoExample>(datasets, split, config, tokenizer, bad, progress, warn, dataset =>
        {
            var transform = PreferenceTypes.Unpaired(dataset.UserDefined != null ? "user_defined" : dataset.Type ?? "", PreferenceDataset.Format(dataset));
            return (row, tok, warnOnce) =>
                PreferenceTokenization.CheckLength(transform(row), row, tok, config.SequenceLen, config.ExcessLengthStrategy, config.MaxPromptLen) is { } text
                    ? PreferenceTokenization.Tokenize(text, tok, warnOnce) : null;
        });
}
