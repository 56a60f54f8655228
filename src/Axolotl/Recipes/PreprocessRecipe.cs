using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Recipes;

/// <summary>
/// <c>axolotl preprocess</c>, and the data half of <c>train</c>: tokenizer plus datasets → examples. The tokenizer is
/// loaded only when a dataset needs one (pre-tokenized rows do not).
/// </summary>
public static class PreprocessRecipe
{
    public static (PreparedDataset Data, Tokenizer? Tokenizer, string TokenizerDir) Run(AxolotlConfig config, IRecipeReporter reporter)
    {
        var tokenizerDir = config.TokenizerConfig ?? config.BaseModelConfig ?? config.BaseModel;
        Tokenizer? tokenizer = null;
        Tokenizer GetTokenizer() => tokenizer ??= Tokenizer.FromFolder(tokenizerDir);
        var data = DatasetBuilder.Build(config, GetTokenizer, reporter.OnTokenizing);
        reporter.Info($"Data: {data.RowsRead} rows → {data.Examples.Count} examples, {data.TotalTokens} tokens ({data.TrainableTokens} trained on)" +
                      (data.DroppedTooLong > 0 ? $"; dropped {data.DroppedTooLong} longer than sequence_len {config.SequenceLen}" : "") +
                      (data.DroppedTooShort > 0 ? $"; dropped {data.DroppedTooShort} shorter than 2 tokens" : "") +
                      (data.DroppedUntrainable > 0 ? $"; dropped {data.DroppedUntrainable} with no trainable tokens (sample_packing)" : "") +
                      (data.Eval.Count > 0 ? $"; {data.Eval.Count} held out for validation (val_set_size {config.ValSetSize})" : ""));
        return (data, tokenizer, tokenizerDir);
    }
}
