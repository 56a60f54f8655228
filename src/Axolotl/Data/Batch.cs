namespace Axolotl.Data;

/// <summary>
/// One micro-batch as the model takes it: [Rows × Length] token ids and labels, right-padded (labels -100 on padding).
/// TrainableTokens counts the labels the loss covers (never a row's or a packed sample's first token: nothing predicts
/// it); RealTokens counts the non-padding tokens.
/// </summary>
public sealed record Batch(long[] InputIds, long[] Labels, int Rows, int Length, long TrainableTokens, long RealTokens)
{
    /// <summary>Packed rows only: each token's position inside its own sample (RoPE restarts at 0 per sample).</summary>
    public long[]? PositionIds { get; init; }

    /// <summary>Packed rows only: which sample of its row each token belongs to (1, 2, …; 0 for padding).</summary>
    public long[]? SequenceIds { get; init; }
}
