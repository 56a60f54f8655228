namespace Axolotl.Data;

/// <summary>
/// One micro-batch as the model takes it: [Rows × Length] token ids and labels, right-padded (labels -100 on padding).
/// TrainableTokens counts the labels the loss covers (never a row's or a packed sample's first token: nothing predicts
/// it); RealTokens counts the non-padding tokens.
/// </summary>
internal sealed record Batch(long[] InputIds, long[] Labels, int Rows, int Length, long TrainableTokens, long RealTokens)
{
    /// <summary>Packed rows only: each token's position inside its own sample (RoPE restarts at 0 per sample).</summary>
    public long[]? PositionIds { get; init; }

    /// <summary>Packed rows only: which sample of its row each token belongs to (1, 2, …; 0 for padding).</summary>
    public long[]? SequenceIds { get; init; }

    /// <summary>Padded rows: each row's real length (the rest is padding).</summary>
    public int[]? RowLengths { get; init; }

    /// <summary>KTO batches only: whether each example (the first half of the rows) is desirable.</summary>
    public bool[]? Desirable { get; init; }

    /// <summary>
    /// Rows right-padded to the longest (rounded up to <paramref name="padToMultipleOf"/>): padding gets the pad id and
    /// label -100. A row's first label is never predicted (the shift), so it is not a trainable token.
    /// </summary>
    public static Batch Pad(IReadOnlyList<Example> rows, int padTokenId, int? padToMultipleOf)
    {
        int length = rows.Max(e => e.InputIds.Length);
        if (padToMultipleOf is int multiple) length = (length + multiple - 1) / multiple * multiple;
        var ids = new long[rows.Count * length];
        var labels = new long[rows.Count * length];
        long trainable = 0, real = 0;
        for (int r = 0; r < rows.Count; r++)
        {
            var e = rows[r];
            for (int t = 0; t < length; t++)
            {
                bool inside = t < e.InputIds.Length;
                ids[r * length + t] = inside ? e.InputIds[t] : padTokenId;
                labels[r * length + t] = inside ? e.Labels[t] : Example.IgnoreIndex;
                if (inside && t > 0 && e.Labels[t] != Example.IgnoreIndex) trainable++;
            }
            real += e.InputIds.Length;
        }
        return new Batch(ids, labels, rows.Count, length, trainable, real) { RowLengths = [.. rows.Select(e => e.InputIds.Length)] };
    }
}
