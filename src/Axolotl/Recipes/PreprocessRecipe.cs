using System.Diagnostics;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Recipes;

/// <summary>
/// <c>axolotl preprocess</c>, and the data half of <c>train</c>: tokenizer plus datasets → examples. The tokenizer is
/// loaded only when a dataset needs one (pre-tokenized rows do not). With <c>dataset_prepared_path</c>, the result is
/// cached there and a later run with the same inputs reads it back; <c>preprocess</c> always rebuilds it, as Axolotl's does.
/// </summary>
internal static class PreprocessRecipe
{
    public static (PreparedDataset Data, Tokenizer? Tokenizer, string TokenizerDir) Run(AxolotlConfig config, IRecipeReporter reporter, bool rebuild = false)
    {
        var tokenizerDir = config.TokenizerFolder();
        Tokenizer? tokenizer = null;
        Tokenizer GetTokenizer() => tokenizer ??= ModelLoading.LoadTokenizer(config);
        string? cacheDir = null;
        PreparedDataset? data = null;
        if (config.DatasetPreparedPath is { Length: > 0 } prepared)
        {
            var watch = Stopwatch.StartNew();
            cacheDir = Path.Combine(prepared, DatasetCache.Key(config, tokenizerDir));
            if (!rebuild && DatasetCache.TryLoad(cacheDir, reporter.Warn) is { } cached)
            {
                data = cached;
                reporter.Info($"Data: loaded the prepared dataset from {cacheDir} in {watch.Elapsed.TotalSeconds:0.00} s");
            }
        }
        if (data == null)
        {
            data = config.Rl != null ? PreferenceDataset.Build(config, GetTokenizer, reporter.OnTokenizing, reporter.Warn)
                : config.RewardModel ? BradleyTerryDataset.Build(config, GetTokenizer, reporter.OnTokenizing, reporter.Warn)
                : DatasetBuilder.Build(config, GetTokenizer, reporter.OnTokenizing, warn: reporter.Warn);
            if (cacheDir != null)
            {
                DatasetCache.Save(cacheDir, data);
                reporter.Info($"Data: saved the prepared dataset to {cacheDir}");
            }
        }
        reporter.Info($"Data: {data.RowsRead} rows → {(config.Rl == RlMethod.Kto ? $"{data.Examples.Count / 2} KTO examples" : config.Rl != null ? $"{data.Examples.Count / 2} preference pairs" : config.RewardModel ? $"{data.Examples.Count / 2} chosen/rejected pairs" : $"{data.Examples.Count} examples")}, {data.TotalTokens} tokens ({data.TrainableTokens} trained on)" +
                      (data.DroppedTooLong > 0 ? $"; dropped {data.DroppedTooLong} longer than sequence_len {config.SequenceLen}" : "") +
                      (data.Truncated > 0 ? $"; truncated {data.Truncated} to sequence_len {config.SequenceLen}" : "") +
                      (data.DroppedTooShort > 0 ? $"; dropped {data.DroppedTooShort} shorter than {config.MinSampleLen} tokens" : "") +
                      (data.DroppedUntrainable > 0 ? $"; dropped {data.DroppedUntrainable} with no trainable tokens (sample_packing)" : "") +
                      (data.Duplicates > 0 ? $"; dropped {data.Duplicates} exact duplicates" : "") +
                      (data.Eval.Count > 0 ? $"; {(config.RewardModel ? $"{data.Eval.Count / 2} pairs" : data.Eval.Count)} held out for evaluation" + (config.TestDatasets.Count > 0 ? " (test_datasets)" : $" (val_set_size {config.ValSetSize})") : ""));
        foreach (var (reason, count, first) in data.SkippedRows)
            reporter.Warn($"skipped {count} bad rows ({reason}; bad_rows: skip), the first: {first}");
        return (data, tokenizer, tokenizerDir);
    }
}
