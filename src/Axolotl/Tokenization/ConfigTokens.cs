namespace Axolotl.Tokenization;

/// <summary>
/// Axolotl's handling of the config keys <c>special_tokens</c> and <c>tokens</c> when it loads the tokenizer
/// (loaders/tokenizer.py): special tokens are set one by one as special added tokens (rstrip, lstrip and normalized
/// off), the BOS/EOS template of a Llama tokenizer is rebuilt when both bos_token and eos_token are given, and
/// <c>tokens</c> are added as plain added tokens. The model's embeddings must then grow to <see cref="Tokenizer.VocabSize"/>.
/// </summary>
internal static class ConfigTokens
{
    /// <summary>What Axolotl's get_linear_embedding_layers returns for the supported model types.</summary>
    public static readonly string[] EmbeddingModules = ["embed_tokens", "lm_head"];

    /// <returns>The number of tokens new to the vocabulary.</returns>
    public static int Apply(Tokenizer tokenizer, IReadOnlyDictionary<string, string>? specialTokens, IReadOnlyList<string>? additionalSpecialTokens,
        IReadOnlyList<string>? tokens, bool adapter, IReadOnlyList<string>? loraModulesToSave)
    {
        int before = tokenizer.VocabSize;
        if (specialTokens is not null)
        {
            foreach (var (key, value) in specialTokens)
            {
                // Axolotl only insists on trainable embeddings when an adapter trains, the token changes and spells out
                // as more than two existing tokens (a short one is taken to be in the vocabulary already); pad is exempt.
                bool modulesMissing = loraModulesToSave is null || !EmbeddingModules.All(loraModulesToSave.Contains);
                if (adapter && key != "pad_token" && modulesMissing && Current(tokenizer, key) != value
                    && tokenizer.Encode(value, addSpecialTokens: false).Count > 2)
                    throw new UserError($"special_tokens.{key}: \"{value}\" is a new token, so with an adapter its embedding must train: " +
                        "set lora_modules_to_save: [embed_tokens, lm_head].");
                tokenizer.SetSpecialToken(key, value);
            }
            if (specialTokens.ContainsKey("bos_token") && specialTokens.ContainsKey("eos_token")
                && tokenizer.TokenizerClass is "LlamaTokenizer" or "CodeLlamaTokenizer")
                tokenizer.UpdatePostProcessor();
        }
        if (additionalSpecialTokens is { Count: > 0 }) tokenizer.AddTokens(additionalSpecialTokens, special: true);
        if (tokens is { Count: > 0 }) tokenizer.AddTokens(tokens);
        return tokenizer.VocabSize - before;
    }

    static string? Current(Tokenizer tokenizer, string key) => key switch
    {
        "bos_token" => tokenizer.BosToken,
        "eos_token" => tokenizer.EosToken,
        "pad_token" => tokenizer.PadToken,
        "unk_token" => tokenizer.UnkToken,
        _ => null,
    };
}
