using Axolotl.Config;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>
/// Axolotl's prepare_preference_datasets for <c>rl:</c> runs: read each dataset, apply its preference type, handle
/// length (excess_length_strategy, max_prompt_len), tokenize as TRL does, shuffle with the seed (shuffle_merged_datasets),
/// split off the validation pairs. A pair is stored as two consecutive examples, prompt+chosen then prompt+rejected, with
/// labels on the completion only, so the cache, <c>preprocess --debug</c> and the batches reuse what SFT examples use.
/// </summary>
internal static class PreferenceDataset
{
    public static PreparedDataset Build(AxolotlConfig config, Func<Tokenizer> tokenizer, Action<int>? progress = null, Action<string>? warn = null)
    {
        var rl = config.Rl ?? throw new InvalidOperationException("not an rl config");
        if (rl == RlMethod.Kto) return KtoDataset.Build(config, tokenizer, progress, warn);
        var bad = new BadRows(config.BadRows == "skip");
        var (pairs, rowsRead, dropped) = Read(config.Datasets, "train", config, tokenizer, bad, progress, warn);
        if (config.ShuffleMergedDatasets) pairs = DatasetBuilder.ShuffleAsDatasets(pairs, config.Seed);
        var eval = DatasetBuilder.HoldOutPairs(pairs, config, () => Read(config.TestDatasets, "test", config, tokenizer, bad, null, warn).Pairs);
        if (pairs.Count == 0)
            throw new UserError($"no preference pairs are left: {dropped} were longer than sequence_len {config.SequenceLen}" +
                                (bad.Total > 0 ? $", {bad.Total} rows were skipped as bad ({bad.Summary()})" : "") + "; raise sequence_len or check the data.");
        return new PreparedDataset(Flatten(pairs), rowsRead, dropped, 0) { Eval = Flatten(eval), SkippedRows = bad.Counts };
    }

    /// <summary>Pairs as consecutive examples: prompt+chosen, then prompt+rejected, labels on the completion.</summary>
    public static List<Example> Flatten(IEnumerable<PreferenceExample> pairs) =>
        pairs.SelectMany(p => new[] { Row(p.Prompt, p.Chosen), Row(p.Prompt, p.Rejected) }).ToList();

    static Example Row(int[] prompt, int[] completion) =>
        new([.. prompt, .. completion], [.. Enumerable.Repeat(Example.IgnoreIndex, prompt.Length), .. completion]);

    /// <summary>The pairs back from <see cref="Flatten"/>'s examples.</summary>
    public static PreferenceExample Pair(Example chosen, Example rejected)
    {
        int promptLength = Array.FindIndex(chosen.Labels, l => l != Example.IgnoreIndex);
        if (promptLength < 0) promptLength = chosen.Labels.Length;
        return new PreferenceExample(chosen.InputIds[..promptLength], chosen.InputIds[promptLength..], rejected.InputIds[promptLength..]);
    }

    static (List<PreferenceExample> Pairs, int RowsRead, int Dropped) Read(IReadOnlyList<DatasetConfig> datasets, string split, AxolotlConfig config,
        Func<Tokenizer> tokenizer, BadRows bad, Action<int>? progress, Action<string>? warn) =>
        ReadRows<PreferenceExample>(datasets, split, config, tokenizer, bad, progress, warn, dataset =>
        {
            var transform = PreferenceTypes.Pairs(config.Rl!.Value, dataset.UserDefined != null ? "user_defined" : dataset.Type, Format(dataset),
                () => DatasetBuilder.ResolveChatTemplate(config, dataset, tokenizer(), warn));
            return (row, tok, warnOnce) =>
                PreferenceTokenization.CheckLength(transform(row), row, tok, config.SequenceLen, config.ExcessLengthStrategy, config.MaxPromptLen) is { } text
                    ? PreferenceTokenization.Tokenize(text, tok, warnOnce) : null;
        });

    /// <summary>
    /// Each dataset's rows turned into examples by <paramref name="converterFor"/>'s converter, in parallel and kept in file
    /// order: a row too long for sequence_len converts to null (dropped, counted), a bad row goes to bad_rows (the first
    /// one is reported when failing), any other user error ends the read. TRL warns once per mismatch; one line per
    /// distinct message is enough here.
    /// </summary>
    internal static (List<T> Examples, int RowsRead, int Dropped) ReadRows<T>(IReadOnlyList<DatasetConfig> datasets, string split,
        AxolotlConfig config, Func<Tokenizer> tokenizer, BadRows bad, Action<int>? progress, Action<string>? warn,
        Func<DatasetConfig, Func<Row, Tokenizer, Action<string>, T?>> converterFor) where T : class
    {
        var examples = new List<T>();
        int rowsRead = 0, dropped = 0;
        var warned = new HashSet<string>();
        void WarnOnce(string message) { lock (warned) if (warned.Add(message)) warn?.Invoke(message); }
        foreach (var dataset in datasets)
        {
            var rows = RowReader.Read(dataset, bad, defaultSplit: split);
            if (dataset.Shards is int shards) rows = DatasetBuilder.Shard(rows, shards, dataset.ShardsIdx ?? 0, config.Seed);
            var convert = converterFor(dataset);
            var results = new T?[rows.Count];
            var errors = new BadRowError?[rows.Count];
            var fatal = new UserError?[rows.Count];
            int done = 0, tooLong = 0;
            var tok = tokenizer();
            Parallel.For(0, rows.Count, i =>
            {
                try
                {
                    results[i] = convert(rows[i], tok, WarnOnce);
                    if (results[i] is null) Interlocked.Increment(ref tooLong);
                }
                catch (BadRowError e) { errors[i] = e; }
                catch (UserError e) { fatal[i] = e; }
                int n = Interlocked.Increment(ref done);
                if (progress != null && (n % 256 == 0 || n == rows.Count)) progress(rowsRead + n);
            });
            if (fatal.FirstOrDefault(e => e != null) is { } first) throw first;
            foreach (var e in errors) if (e != null) bad.Report(e);
            examples.AddRange(results.OfType<T>());
            rowsRead += rows.Count;
            dropped += tooLong;
        }
        return (examples, rowsRead, dropped);
    }

    /// <summary>A dataset entry's keys as the preference types read them.</summary>
    internal static PreferenceFormat Format(DatasetConfig d)
    {
        var f = new PreferenceFormat
        {
            FieldMessages = d.FieldMessages ?? "messages",
            FieldSystem = d.FieldSystem ?? "system",
            FieldChosen = d.FieldChosen ?? "chosen",
            FieldRejected = d.FieldRejected ?? "rejected",
            MessagePropertyMappings = d.MessagePropertyMappings,
            Roles = d.Roles?.ToDictionary(kv => kv.Key, kv => (IReadOnlyList<string>)kv.Value),
        };
        return d.UserDefined is not { } u ? f : f with
        {
            FieldPrompt = u.FieldPrompt, FieldSystem = u.FieldSystem, FieldChosen = u.FieldChosen, FieldRejected = u.FieldRejected,
            PromptFormat = u.PromptFormat, ChosenFormat = u.ChosenFormat, RejectedFormat = u.RejectedFormat,
        };
    }
}
