namespace Axolotl.Distributed;

/// <summary>
/// A run over several ranks: who they are, and how much of the optimizer each keeps (DeepSpeed's ZeRO stage from the
/// <c>deepspeed:</c> config: 0 every rank holds everything, 1 the optimizer state is sharded, 2 the gradients too).
/// </summary>
public sealed record DataParallel(MpiCollectives World, int ZeroStage);
