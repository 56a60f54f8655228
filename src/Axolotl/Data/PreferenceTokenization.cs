using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>A tokenized preference pair: TRL's prompt_ids, chosen_ids and rejected_ids.</summary>
internal sealed record PreferenceExample(int[] Prompt, int[] Chosen, int[] Rejected);

/// <summary>A tokenized KTO example: prompt_ids, completion_ids and the label.</summary>
internal sealed record KtoExample(int[] Prompt, int[] Completion, bool Label);

/// <summary>
/// Tokenization as TRL 1.8's DPOTrainer/KTOTrainer prepare a dataset, after Axolotl's length handling.
/// Text: EOS appended to each completion unless it ends with it, the prompt and prompt+completion tokenized with the
/// tokenizer's special tokens, the completion ids being what follows the prompt's ids (a warning, as TRL's, when the
/// prompt's ids are not a prefix). Rendered conversations: the same without special tokens and without EOS.
/// </summary>
internal static class PreferenceTokenization
{
    const string PrefixWarning = "Mismatch between tokenized prompt and the start of tokenized prompt+{0}. This may be due to unexpected " +
                                 "tokenizer behavior, whitespace issues, or special token handling. Verify that the tokenizer is processing text consistently.";

    public static PreferenceExample Tokenize(PreferenceText t, Tokenizer tokenizer, Action<string>? warn = null)
    {
        var (prompt, chosen) = Split(t.Prompt, t.Chosen, t.Rendered, tokenizer, "chosen", warn);
        var (_, rejected) = Split(t.Prompt, t.Rejected, t.Rendered, tokenizer, "rejected", warn);
        return new PreferenceExample(prompt, chosen, rejected);
    }

    public static KtoExample Tokenize(KtoText t, Tokenizer tokenizer, Action<string>? warn = null)
    {
        var (prompt, completion) = Split(t.Prompt, t.Completion, t.Rendered, tokenizer, "completion", warn);
        return new KtoExample(prompt, completion, t.Label);
    }

    static (int[] Prompt, int[] Completion) Split(string prompt, string completion, bool rendered, Tokenizer tokenizer, string what, Action<string>? warn)
    {
        int[] promptIds, fullIds;
        if (rendered)
        {
            promptIds = [.. tokenizer.Encode(prompt, addSpecialTokens: false)];
            fullIds = [.. tokenizer.Encode(completion, addSpecialTokens: false)];
        }
        else
        {
            var eos = tokenizer.EosToken ?? throw new UserError("the tokenizer has no eos_token, which TRL appends to each completion; set special_tokens.eos_token.");
            if (!completion.EndsWith(eos, StringComparison.Ordinal)) completion += eos;
            promptIds = [.. tokenizer.Encode(prompt)];
            fullIds = [.. tokenizer.Encode(prompt + completion)];
        }
        if (!fullIds.AsSpan(0, Math.Min(promptIds.Length, fullIds.Length)).SequenceEqual(promptIds)) warn?.Invoke(string.Format(PrefixWarning, what));
        return (promptIds, fullIds.Length > promptIds.Length ? fullIds[promptIds.Length..] : []);
    }

    /// <summary>
    /// Axolotl's check before TRL sees a pair: prompt, chosen and rejected must be non-empty, and prompt + each
    /// completion (tokenized without special tokens) must fit sequence_len. Returns the pair (truncated under
    /// <c>excess_length_strategy: truncate</c>), or null when it is to be dropped.
    /// </summary>
    public static PreferenceText? CheckLength(PreferenceText t, Row row, Tokenizer tokenizer, int sequenceLen, string excessLengthStrategy, int? maxPromptLen)
    {
        RequireText(row, ("prompt", t.Prompt), ("chosen", t.Chosen), ("rejected", t.Rejected));
        if (t.Rendered) return t;
        int prompt = PromptLength(t.Prompt, row, tokenizer, maxPromptLen);
        var chosen = tokenizer.Encode(t.Chosen, addSpecialTokens: false);
        var rejected = tokenizer.Encode(t.Rejected, addSpecialTokens: false);
        if (prompt + chosen.Count <= sequenceLen && prompt + rejected.Count <= sequenceLen) return t;
        switch (excessLengthStrategy)
        {
            case "raise":
                throw new UserError($"{row.Where}: the prompt and a completion take {prompt + Math.Max(chosen.Count, rejected.Count)} tokens, more than sequence_len {sequenceLen} " +
                                    "(excess_length_strategy: raise); set excess_length_strategy to drop or truncate, or raise sequence_len.");
            case "truncate" when sequenceLen - prompt > 0:
                int keep = sequenceLen - prompt;
                return t with
                {
                    Chosen = chosen.Count > keep ? tokenizer.Decode(chosen.Take(keep)) : t.Chosen,
                    Rejected = rejected.Count > keep ? tokenizer.Decode(rejected.Take(keep)) : t.Rejected,
                };
            default: return null;
        }
    }

    /// <summary>KTO's length check, as <see cref="CheckLength(PreferenceText, Row, Tokenizer, int, string, int?)"/>.</summary>
    public static KtoText? CheckLength(KtoText t, Row row, Tokenizer tokenizer, int sequenceLen, string excessLengthStrategy, int? maxPromptLen)
    {
        RequireText(row, ("prompt", t.Prompt), ("completion", t.Completion));
        if (t.Rendered) return t;
        int prompt = PromptLength(t.Prompt, row, tokenizer, maxPromptLen);
        var completion = tokenizer.Encode(t.Completion, addSpecialTokens: false);
        if (prompt + completion.Count <= sequenceLen) return t;
        return excessLengthStrategy switch
        {
            "raise" => throw new UserError($"{row.Where}: the prompt and completion take {prompt + completion.Count} tokens, more than sequence_len {sequenceLen} " +
                                           "(excess_length_strategy: raise); set excess_length_strategy to drop or truncate, or raise sequence_len."),
            "truncate" when sequenceLen - prompt > 0 => t with { Completion = tokenizer.Decode(completion.Take(sequenceLen - prompt)) },
            _ => null,
        };
    }

    static void RequireText(Row row, params (string Field, string Text)[] parts)
    {
        foreach (var (field, text) in parts)
            if (text.Length == 0)
                throw new BadRowError("empty field", $"{row.Where}: the {field} is empty; a preference row needs a prompt and non-empty completions.");
    }

    /// <summary>The prompt's length without special tokens; longer than max_prompt_len, the row is bad.</summary>
    static int PromptLength(string prompt, Row row, Tokenizer tokenizer, int? maxPromptLen)
    {
        int length = tokenizer.Encode(prompt, addSpecialTokens: false).Count;
        if (maxPromptLen is int max && length > max)
            throw new BadRowError("prompt too long", $"{row.Where}: the prompt takes {length} tokens, more than max_prompt_len {max}.");
        return length;
    }

    /// <summary>
    /// TRL's DataCollatorForPreference: rows [prompt+chosen …; prompt+rejected …] (all chosen first), each cut to
    /// <paramref name="maxLength"/> from the start (truncation_mode keep_start), right-padded with the pad id; the labels are
    /// the completion's tokens (-100 on the prompt and padding), so a row's summed log-probability is over its completion.
    /// </summary>
    public static Batch Collate(IReadOnlyList<PreferenceExample> pairs, int padTokenId, int? maxLength)
    {
        Example Row(int[] prompt, int[] completion)
        {
            int[] ids = [.. prompt, .. completion];
            int[] labels = [.. Enumerable.Repeat(Example.IgnoreIndex, prompt.Length), .. completion];
            if (maxLength is int max && ids.Length > max) (ids, labels) = (ids[..max], labels[..max]);
            return new Example(ids, labels);
        }
        var rows = pairs.Select(p => Row(p.Prompt, p.Chosen)).Concat(pairs.Select(p => Row(p.Prompt, p.Rejected))).ToList();
        return Batch.Pad(rows, padTokenId, null);
    }
}
