using Axolotl.Config;
using Axolotl.Tokenization;

namespace Axolotl.Data;

public sealed record PreparedDataset(IReadOnlyList<Example> Examples, int RowsRead, int DroppedTooLong, int DroppedTooShort)
{
    /// <summary>With sample_packing, examples whose labels are all -100 are dropped (Axolotl's drop_no_trainable_tokens).</summary>
    public int DroppedUntrainable { get; init; }
    /// <summary>The validation split (val_set_size), empty when there is none.</summary>
    public IReadOnlyList<Example> Eval { get; init; } = [];
    public long TotalTokens => Examples.Sum(e => (long)e.InputIds.Length);
    public long TrainableTokens => Examples.Sum(e => (long)e.TrainableTokens);
}

/// <summary>
/// Axolotl's data preparation for the supported formats: read each dataset, apply its prompt strategy, concatenate,
/// shuffle with the seed, handle sequences longer than sequence_len (excess_length_strategy) and drop those shorter than 2.
/// </summary>
public static class DatasetBuilder
{
    const int MinSampleLen = 2;

    public static PreparedDataset Build(AxolotlConfig config, Func<Tokenizer> tokenizer, Action<int>? progress = null)
    {
        var examples = new List<Example>();
        int rowsRead = 0;
        foreach (var dataset in config.Datasets)
        {
            var rows = RowReader.Read(dataset.Path, dataset.DsType);
            var strategy = PromptStrategies.For(dataset.Type, tokenizer, config.SequenceLen, config.TrainOnInputs, dataset.Field);
            var perRow = new Example[rows.Count][];
            int done = 0;
            var errors = new UserError?[rows.Count];
            Parallel.For(0, rows.Count, i =>
            {
                try
                {
                    perRow[i] = strategy.Tokenize(rows[i]).ToArray();
                    if (config.ExcessLengthStrategy == "raise" && perRow[i].FirstOrDefault(e => e.InputIds.Length > config.SequenceLen) is { } tooLong)
                        throw new UserError($"{rows[i].Where}: {tooLong.InputIds.Length} tokens, longer than sequence_len {config.SequenceLen} " +
                                            "(excess_length_strategy: raise); shorten the row, raise sequence_len, or use drop or truncate.");
                }
                catch (UserError e) { errors[i] = e; perRow[i] = []; }
                int n = Interlocked.Increment(ref done);
                if (progress != null && (n % 256 == 0 || n == rows.Count)) progress(rowsRead + n);
            });
            // Report the first bad row in file order, whichever thread met it first.
            if (errors.FirstOrDefault(e => e != null) is { } firstError) throw firstError;
            rowsRead += rows.Count;
            foreach (var part in perRow) examples.AddRange(part);
        }
        if (config.ShuffleMergedDatasets) Shuffle(examples, config.Seed);
        int tooLong = 0;
        if (config.ExcessLengthStrategy == "truncate")
        {
            int n = config.SequenceLen;
            for (int i = 0; i < examples.Count; i++)
                if (examples[i].InputIds.Length > n) examples[i] = new Example(examples[i].InputIds[..n], examples[i].Labels[..n]);
        }
        else tooLong = examples.RemoveAll(e => e.InputIds.Length > config.SequenceLen);
        int tooShort = examples.RemoveAll(e => e.InputIds.Length < MinSampleLen);
        int untrainable = config.SamplePacking ? examples.RemoveAll(e => e.Labels.All(l => l == Example.IgnoreIndex)) : 0;
        var eval = SplitOffValidation(examples, config.ValSetSize);
        if (examples.Count == 0)
            throw new UserError($"no training examples are left: {tooLong} were longer than sequence_len {config.SequenceLen}, {tooShort} shorter than {MinSampleLen} tokens" +
                                (eval.Count > 0 ? $" and {eval.Count} went to the validation split" : "") + "; raise sequence_len or check the data.");
        return new PreparedDataset(examples, rowsRead, tooLong, tooShort) { Eval = eval, DroppedUntrainable = untrainable };
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
