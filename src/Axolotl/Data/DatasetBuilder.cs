using Axolotl.Config;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>What a prepared dataset holds, as <c>axolotl preprocess</c> reports it (the examples stay inside the library).</summary>
public sealed record DatasetSummary(int RowsRead, int Examples, int EvalExamples, long Tokens, long TrainableTokens, bool FromCache)
{
    internal static DatasetSummary Of(PreparedDataset data) =>
        new(data.RowsRead, data.Examples.Count, data.Eval.Count, data.TotalTokens, data.TrainableTokens, data.FromCache);
}

/// <summary>Prepared examples; read from the cache, they are memory-mapped and Dispose unmaps them.</summary>
internal sealed record PreparedDataset(IReadOnlyList<Example> Examples, int RowsRead, int DroppedTooLong, int DroppedTooShort) : IDisposable
{
    /// <summary>With sample_packing, examples whose labels are all -100 are dropped (Axolotl's drop_no_trainable_tokens).</summary>
    public int DroppedUntrainable { get; init; }
    /// <summary>The validation split (val_set_size) or the test_datasets, empty when there is none.</summary>
    public IReadOnlyList<Example> Eval { get; init; } = [];
    public int Truncated { get; init; }
    public int Duplicates { get; init; }
    /// <summary>Rows left out under <c>bad_rows: skip</c>, per reason.</summary>
    public IReadOnlyList<(string Reason, int Count, string First)> SkippedRows { get; init; } = [];
    /// <summary>Whether this came from the dataset_prepared_path cache.</summary>
    public bool FromCache { get; init; }
    public long TotalTokens => Examples is MappedExamples mapped ? mapped.TotalTokens : Examples.Sum(e => (long)e.InputIds.Length);
    public long TrainableTokens => Examples is MappedExamples mapped ? mapped.TrainableTokens : Examples.Sum(e => (long)e.TrainableTokens);
    public int MaxTokenId => Examples is MappedExamples mapped ? mapped.MaxTokenId() : Examples.Max(e => e.InputIds.Length == 0 ? int.MinValue : e.InputIds.Max());

    public void Dispose()
    {
        (Examples as IDisposable)?.Dispose();
        (Eval as IDisposable)?.Dispose();
    }
}

/// <summary>
/// Axolotl's data preparation: read each dataset (and keep its shard), apply its prompt strategy, concatenate, shuffle
/// with the seed as datasets does (shuffle_merged_datasets), handle sequences outside [min_sample_len, sequence_len] by
/// excess_length_strategy, drop exact duplicates (dataset_exact_deduplication), split off the validation rows.
/// </summary>
internal static class DatasetBuilder
{
    /// <summary>The validation pairs of a pairwise dataset (preference, reward model): test_datasets' when given, else the
    /// last val_set_size (a fraction or a count) of <paramref name="pairs"/>, which are removed from it.</summary>
    public static List<T> HoldOutPairs<T>(List<T> pairs, AxolotlConfig config, Func<List<T>> readTestDatasets)
    {
        if (config.TestDatasets.Count > 0) return readTestDatasets();
        int count = config.ValSetSize <= 0 ? 0 : config.ValSetSize < 1 ? (int)Math.Ceiling(config.ValSetSize * pairs.Count) : (int)config.ValSetSize;
        if (count >= pairs.Count && count > 0)
            throw new UserError($"val_set_size {config.ValSetSize} takes {count} of the {pairs.Count} pairs, leaving none to train on.");
        var eval = pairs.GetRange(pairs.Count - count, count);
        pairs.RemoveRange(pairs.Count - count, count);
        return eval;
    }

    public static PreparedDataset Build(AxolotlConfig config, Func<Tokenizer> tokenizer, Action<int>? progress = null,
        Func<DatasetConfig, IChatTemplate>? chatTemplate = null, Action<string>? warn = null)
    {
        var bad = new BadRows(config.BadRows == "skip");
        chatTemplate ??= d => ResolveChatTemplate(config, d, tokenizer(), warn);
        var context = new StrategyContext(tokenizer, config.SequenceLen, config.TrainOnInputs)
        {
            ChatTemplate = chatTemplate, EotTokens = config.EotTokens, Warn = warn,
        };
        var (examples, rowsRead) = Tokenize(config.Datasets, "train", config, context, bad, progress);
        if (config.ShuffleMergedDatasets) examples = ShuffleAsDatasets(examples, config.Seed);
        var (tooLong, tooShort, truncated) = HandleLength(examples, config);
        int duplicates = config.DatasetExactDeduplication ? Deduplicate(examples) : 0;
        // Axolotl's drop_no_trainable_tokens: a packed sample without a trained token only takes room.
        int untrainable = config.SamplePacking ? examples.RemoveAll(e => e.Labels.All(l => l == Example.IgnoreIndex)) : 0;
        List<Example> eval;
        if (config.TestDatasets.Count > 0)
        {
            eval = Tokenize(config.TestDatasets, "test", config, context, bad, null).Examples;
            HandleLength(eval, config);
        }
        else eval = SplitOffValidation(examples, config.ValSetSize);
        if (examples.Count == 0)
            throw new UserError($"no training examples are left: {tooLong} were longer than sequence_len {config.SequenceLen}, {tooShort} shorter than {config.MinSampleLen} tokens" +
                                (bad.Total > 0 ? $", {bad.Total} rows were skipped as bad ({bad.Summary()})" : "") +
                                (eval.Count > 0 && config.TestDatasets.Count == 0 ? $" and {eval.Count} went to the validation split" : "") + "; raise sequence_len or check the data.");
        return new PreparedDataset(examples, rowsRead, tooLong, tooShort)
        {
            Eval = eval, Truncated = truncated, Duplicates = duplicates, SkippedRows = bad.Counts, DroppedUntrainable = untrainable,
        };
    }

    /// <summary>A dataset's chat template: its own chat_template keys, else the config's, else the tokenizer's own.</summary>
    public static IChatTemplate ResolveChatTemplate(AxolotlConfig config, DatasetConfig? d, Tokenizer tokenizer, Action<string>? warn) =>
        d?.ChatTemplate is { Length: > 0 }
            ? ChatTemplates.Resolve(d.ChatTemplate, d.ChatTemplateJinja ?? config.ChatTemplateJinja, config.TokenizerFolder(), SpecialTokens.From(tokenizer), warn)
            : ChatTemplates.Resolve(config.ChatTemplate, config.ChatTemplateJinja, config.TokenizerFolder(), SpecialTokens.From(tokenizer), warn);

    static (List<Example> Examples, int RowsRead) Tokenize(IReadOnlyList<DatasetConfig> datasets, string split, AxolotlConfig config,
        StrategyContext context, BadRows bad, Action<int>? progress)
    {
        var examples = new List<Example>();
        int rowsRead = 0;
        foreach (var dataset in datasets)
        {
            var rows = RowReader.Read(dataset, bad, defaultSplit: split);
            if (dataset.Shards is int shards) rows = Shard(rows, shards, dataset.ShardsIdx ?? 0, config.Seed);
            var strategy = PromptStrategies.For(dataset, context);
            var perRow = new Example[rows.Count][];
            var errors = new BadRowError?[rows.Count];
            int done = 0;
            Parallel.For(0, rows.Count, i =>
            {
                try { perRow[i] = strategy.Tokenize(rows[i]).ToArray(); }
                catch (BadRowError e) { errors[i] = e; perRow[i] = []; }
                int n = Interlocked.Increment(ref done);
                if (progress != null && (n % 256 == 0 || n == rows.Count)) progress(rowsRead + n);
            });
            if (config.ExcessLengthStrategy == "raise")
                for (int i = 0; i < rows.Count; i++)
                    if (perRow[i].FirstOrDefault(e => e.InputIds.Length > config.SequenceLen) is { } tooLong)
                        throw new UserError($"{rows[i].Where}: {tooLong.InputIds.Length} tokens, longer than sequence_len {config.SequenceLen} " +
                                            "(excess_length_strategy: raise); shorten the row, raise sequence_len, or use drop or truncate.");
            // In file order, whichever thread met them first: the first bad row is the one reported when failing.
            foreach (var e in errors) if (e != null) bad.Report(e);
            rowsRead += rows.Count;
            foreach (var part in perRow) examples.AddRange(part);
        }
        return (examples, rowsRead);
    }

    /// <summary>
    /// Axolotl's shards: <c>dataset.shuffle(seed=seed).shard(n, idx)</c>, that is the rows in the order of NumPy's
    /// <c>default_rng(seed).permutation</c>, then the idx-th of n contiguous parts (datasets' shard with contiguous=True:
    /// the first len % n parts are one row longer).
    /// </summary>
    public static IReadOnlyList<Row> Shard(IReadOnlyList<Row> rows, int shards, int index, int seed)
    {
        if (shards < 1 || index < 0 || index >= shards) throw new UserError($"shards_idx {index} must be between 0 and shards - 1 ({shards - 1}).");
        var shuffled = ShuffleAsDatasets(rows, seed);
        int div = rows.Count / shards, mod = rows.Count % shards;
        int start = div * index + Math.Min(index, mod);
        int end = start + div + (index < mod ? 1 : 0);
        return shuffled.GetRange(start, end - start);
    }

    /// <summary>
    /// Hugging Face datasets' <c>shuffle(seed=seed)</c>, which Axolotl uses for shards and shuffle_merged_datasets: item k
    /// of the result is item p[k] of the input, p being NumPy's <c>default_rng(seed).permutation(count)</c>.
    /// </summary>
    public static List<T> ShuffleAsDatasets<T>(IReadOnlyList<T> items, int seed)
    {
        if (seed < 0) throw new UserError($"seed {seed} must be non-negative: datasets' shuffle seeds NumPy's generator with it, which refuses negative seeds.");
        return NumpyRandom.DefaultRng(seed).Permutation(items.Count).Select(i => items[i]).ToList();
    }

    /// <summary>
    /// Axolotl's handle_long_seq_in_dataset: drop (or raise on) sequences longer than sequence_len and drop those
    /// shorter than min_sample_len; with truncate, cut long ones to sequence_len instead.
    /// </summary>
    static (int TooLong, int TooShort, int Truncated) HandleLength(List<Example> examples, AxolotlConfig config)
    {
        int max = config.SequenceLen, min = config.MinSampleLen;
        int tooShort = examples.RemoveAll(e => e.InputIds.Length < min);
        switch (config.ExcessLengthStrategy)
        {
            case "truncate":
                int truncated = 0;
                for (int i = 0; i < examples.Count; i++)
                    if (examples[i].InputIds.Length > max)
                    {
                        examples[i] = new Example(examples[i].InputIds[..max], examples[i].Labels[..max]);
                        truncated++;
                    }
                return (0, tooShort, truncated);
            case "raise":
                var longest = examples.FirstOrDefault(e => e.InputIds.Length > max);
                if (longest != null)
                    throw new UserError($"a sequence of {longest.InputIds.Length} tokens is longer than sequence_len {max} (excess_length_strategy: raise); " +
                                        "raise sequence_len, or set excess_length_strategy to drop or truncate.");
                return (0, tooShort, 0);
            default:
                return (examples.RemoveAll(e => e.InputIds.Length > max), tooShort, 0);
        }
    }

    /// <summary>dataset_exact_deduplication: keep the first of rows whose input_ids and labels are equal.</summary>
    static int Deduplicate(List<Example> examples)
    {
        var seen = new HashSet<Example>(ExampleComparer.Instance);
        int before = examples.Count;
        examples.RemoveAll(e => !seen.Add(e));
        return before - examples.Count;
    }

    sealed class ExampleComparer : IEqualityComparer<Example>
    {
        public static readonly ExampleComparer Instance = new();
        public bool Equals(Example? a, Example? b) => a!.InputIds.AsSpan().SequenceEqual(b!.InputIds) && a.Labels.AsSpan().SequenceEqual(b.Labels);
        public int GetHashCode(Example e)
        {
            var h = new HashCode();
            foreach (var id in e.InputIds) h.Add(id);
            foreach (var l in e.Labels) h.Add(l);
            return h.ToHashCode();
        }
    }

    /// <summary>
    /// datasets' train_test_split(test_size, shuffle=False) as Axolotl calls it: the last rows become the validation set,
    /// ceil(fraction × rows) of them for a fraction, or that many rows for a size above 1.
    /// </summary>
    static List<Example> SplitOffValidation(List<Example> examples, double valSetSize)
    {
        if (valSetSize <= 0) return [];
        int count = valSetSize < 1 ? (int)Math.Ceiling(valSetSize * examples.Count) : (int)valSetSize;
        if (count >= examples.Count)
            throw new UserError($"val_set_size {valSetSize} takes {count} of the {examples.Count} examples, leaving none to train on.");
        var eval = examples.GetRange(examples.Count - count, count);
        examples.RemoveRange(examples.Count - count, count);
        return eval;
    }

    /// <summary>Fisher-Yates with a seeded generator: the same seed gives the same order on every machine.</summary>
    public static void Shuffle<T>(IList<T> items, int seed)
    {
        var random = new Random(seed);
        for (int i = items.Count - 1; i > 0; i--)
        {
            int j = random.Next(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
