using static TorchSharp.torch;

namespace Axolotl.Distributed;

/// <summary>
/// The collectives a data-parallel run needs, behind one small interface: the training loop calls these and never
/// names a transport. One process is the trivial implementation; MPI is the first real one (NCCL can follow without
/// touching the loop).
/// </summary>
internal interface ICollectives
{
    int Rank { get; }
    int WorldSize { get; }
    bool IsMain => Rank == 0;

    /// <summary>Sums a contiguous tensor over all ranks, in place.</summary>
    void AllReduceSum(Tensor tensor);

    /// <summary>Sums a number over all ranks.</summary>
    double AllReduceSum(double value);

    /// <summary>Copies rank <paramref name="root"/>'s tensor into every rank's, in place.</summary>
    void Broadcast(Tensor tensor, int root = 0);

    void Barrier();
}

/// <summary>A world of one: every collective is the identity.</summary>
internal sealed class SingleProcess : ICollectives
{
    public static readonly SingleProcess Instance = new();
    SingleProcess() { }
    public int Rank => 0;
    public int WorldSize => 1;
    public void AllReduceSum(Tensor tensor) { }
    public double AllReduceSum(double value) => value;
    public void Broadcast(Tensor tensor, int root = 0) { }
    public void Barrier() { }
}
