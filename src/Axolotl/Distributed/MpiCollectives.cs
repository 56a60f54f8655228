using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Distributed;

/// <summary>
/// Collectives over tensors on MPI_COMM_WORLD. Buffers are handed to MPI where they are (contiguous host memory in a
/// type MPI sums: fp32, fp64, int64); anything else (bf16, fp16, a GPU tensor without CUDA-aware MPI) goes through an
/// fp32 host copy, so sums never round in bf16. Every method is collective: all ranks call it in the same order.
/// </summary>
internal sealed class MpiCollectives : ICollectives, IDisposable
{
    readonly Mpi _mpi;

    internal MpiCollectives(Mpi mpi) => _mpi = mpi;

    public int Rank => _mpi.Rank;
    public int WorldSize => _mpi.Size;
    /// <summary>The MPI library in use, for the run's first lines.</summary>
    public string Describe() => $"{_mpi.Version()} ({_mpi.Library})";

    /// <summary>Sums <paramref name="t"/> over ranks, in place.</summary>
    public void AllReduceSum(Tensor t)
    {
        if (t.numel() == 0) return;
        using var _ = no_grad();
        if (Direct(t) is { } type) { _mpi.AllReduce(Address(t), t.numel(), type); return; }
        using var staged = Staged(t);
        _mpi.AllReduce(Address(staged), staged.numel(), Mpi.Type.Float);
        t.copy_(staged);
    }

    public unsafe double AllReduceSum(double value)
    {
        _mpi.AllReduce((nint)(&value), 1, Mpi.Type.Double);
        return value;
    }

    public unsafe long AllReduceSum(long value)
    {
        _mpi.AllReduce((nint)(&value), 1, Mpi.Type.Int64);
        return value;
    }

    public unsafe long AllReduceMax(long value)
    {
        _mpi.AllReduce((nint)(&value), 1, Mpi.Type.Int64, Mpi.Op.Max);
        return value;
    }

    /// <summary>
    /// <paramref name="input"/> (WorldSize × n elements, flat) summed over ranks; this rank's block r (elements
    /// [r·n, (r+1)·n)) is written to <paramref name="output"/> (n elements, fp32).
    /// </summary>
    public void ReduceScatterSum(Tensor input, Tensor output)
    {
        long n = output.numel();
        if (input.numel() != n * WorldSize) throw new ArgumentException($"reduce-scatter of {input.numel()} elements into blocks of {n} over {WorldSize} ranks");
        if (n > int.MaxValue) throw new ArgumentException("reduce-scatter blocks are limited to 2^31 elements");
        using var _ = no_grad();
        using var send = Direct(input) == Mpi.Type.Float ? input.alias() : Staged(input);
        bool direct = Direct(output) == Mpi.Type.Float;
        using var receive = direct ? output.alias() : empty(n, ScalarType.Float32);
        _mpi.ReduceScatterBlock(Address(send), Address(receive), (int)n, Mpi.Type.Float);
        if (!direct) output.copy_(receive.view(output.shape));
    }

    /// <summary>
    /// <paramref name="buffer"/> holds WorldSize blocks; this rank's block r is sent to all, and block k of every rank
    /// is replaced by rank k's. In place.
    /// </summary>
    public void AllGather(Tensor buffer)
    {
        long total = buffer.numel();
        if (total % WorldSize != 0) throw new ArgumentException($"all-gather of {total} elements over {WorldSize} ranks");
        using var _ = no_grad();
        if (IsHostContiguous(buffer))
        {
            // Any dtype: the blocks are only copied, so they travel as bytes.
            long blockBytes = total / WorldSize * buffer.ElementSize;
            if (blockBytes > int.MaxValue) throw new ArgumentException("all-gather blocks are limited to 2 GiB");
            _mpi.AllGatherInPlace(Address(buffer), (int)blockBytes, Mpi.Type.Byte);
            return;
        }
        using var host = buffer.cpu().contiguous();
        AllGather(host);
        buffer.copy_(host);
    }

    /// <summary>Overwrites <paramref name="t"/> on every rank with <paramref name="root"/>'s values (any dtype).</summary>
    public void Broadcast(Tensor t, int root = 0)
    {
        if (t.numel() == 0) return;
        using var _ = no_grad();
        if (IsHostContiguous(t)) { _mpi.Broadcast(Address(t), t.numel() * t.ElementSize, Mpi.Type.Byte, root); return; }
        using var host = t.cpu().contiguous();
        Broadcast(host, root);
        t.copy_(host);
    }

    public unsafe void Broadcast(byte[] bytes, int root = 0)
    {
        fixed (byte* p = bytes) _mpi.Broadcast((nint)p, bytes.Length, Mpi.Type.Byte, root);
    }

    /// <summary>Every rank's bytes, on rank 0 (in rank order); null on the other ranks. For per-rank state a checkpoint
    /// keeps (a ZeRO shard, a generator state), which rank 0 writes.</summary>
    public unsafe byte[][]? GatherToRoot(byte[] mine)
    {
        const int LengthTag = 19001, DataTag = 19002;
        if (Rank != 0)
        {
            long length = mine.Length;
            _mpi.Send((nint)(&length), sizeof(long), 0, LengthTag);
            fixed (byte* p = mine) _mpi.Send((nint)p, mine.Length, 0, DataTag);
            return null;
        }
        var all = new byte[WorldSize][];
        all[0] = mine;
        for (int k = 1; k < WorldSize; k++)
        {
            long length;
            _mpi.Receive((nint)(&length), sizeof(long), k, LengthTag);
            if (length > int.MaxValue) throw new InvalidOperationException($"rank {k}'s state is over 2 GiB");
            all[k] = new byte[length];
            fixed (byte* p = all[k]) _mpi.Receive((nint)p, (int)length, k, DataTag);
        }
        return all;
    }

    public void Barrier() => _mpi.Barrier();

    /// <summary>Ends the whole job with <paramref name="code"/>: the launcher stops every other rank.</summary>
    public void Abort(int code) => _mpi.Abort(code);

    public void Dispose() => _mpi.Finalize_();

    /// <summary>The address of a contiguous host tensor's first element (TorchSharp exposes it as a span; a one-element
    /// view keeps that span short whatever the tensor's size).</summary>
    static unsafe nint Address(Tensor t)
    {
        using var first = t.view(-1).narrow(0, 0, 1);
        return (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(first.bytes));
    }

    static bool IsHostContiguous(Tensor t) => t.device_type == DeviceType.CPU && t.is_contiguous();

    static Mpi.Type? Direct(Tensor t) => !IsHostContiguous(t) ? null : t.dtype switch
    {
        ScalarType.Float32 => Mpi.Type.Float,
        ScalarType.Float64 => Mpi.Type.Double,
        ScalarType.Int64 => Mpi.Type.Int64,
        _ => null,
    };

    /// <summary>An fp32 host copy to reduce in (bf16 and fp16 have no MPI sum; a device tensor may not be MPI-visible).</summary>
    static Tensor Staged(Tensor t) => t.to(ScalarType.Float32, CPU).contiguous().reshape(-1);
}
