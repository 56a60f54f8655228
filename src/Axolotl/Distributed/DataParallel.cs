namespace Axolotl.Distributed;

/// <summary>
/// A run over several ranks: who they are, and how much of the optimizer each keeps (DeepSpeed's ZeRO stage from the
/// <c>deepspeed:</c> config: 0 every rank holds everything, 1 the optimizer state is sharded, 2 the gradients too).
/// </summary>
internal sealed record DataParallel(MpiCollectives World, int ZeroStage) : ICollectives
{
    // The loop sees the collectives; the optimizer also reads the ZeRO stage from here (TrainingOptions.Collectives).
    public int Rank => World.Rank;
    public int WorldSize => World.WorldSize;
    public void AllReduceSum(TorchSharp.torch.Tensor tensor) => World.AllReduceSum(tensor);
    public double AllReduceSum(double value) => World.AllReduceSum(value);
    public void Broadcast(TorchSharp.torch.Tensor tensor, int root = 0) => World.Broadcast(tensor, root);
    public void Barrier() => World.Barrier();
}
