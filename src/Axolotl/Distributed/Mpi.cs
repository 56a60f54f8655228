using System.Runtime.InteropServices;

namespace Axolotl.Distributed;

/// <summary>
/// The few MPI C functions training needs, over raw buffers: init/finalize, rank and size, all-reduce, reduce-scatter,
/// all-gather, broadcast, barrier, abort. Functions are looked up in the loaded library by name, so one build runs with
/// whatever libmpi the machine (or cluster) provides; the implementation-specific handles come from <see cref="MpiAbi"/>.
/// Every call is collective over MPI_COMM_WORLD and must be made by all ranks in the same order. MPI's default error
/// handler aborts the whole job on a failed call, which is what training wants: no rank is left waiting.
/// </summary>
internal sealed unsafe class Mpi
{
    /// <summary>Element types the layer sends (MPI has no bf16: callers widen it to fp32).</summary>
    public enum Type { Float, Double, Int64, Byte }
    public enum Op { Sum, Max }

    readonly MpiAbi _abi;
    readonly delegate* unmanaged<int*, nint*, int, int*, int> _initThread;
    readonly delegate* unmanaged<int*, int> _initialized, _finalized;
    readonly delegate* unmanaged<int> _finalize;
    readonly delegate* unmanaged<nint, int*, int> _commRank, _commSize;
    readonly delegate* unmanaged<nint, nint, int, nint, nint, nint, int> _allreduce, _reduceScatterBlock;
    readonly delegate* unmanaged<nint, int, nint, nint, int, nint, nint, int> _allgather;
    readonly delegate* unmanaged<nint, int, nint, int, nint, int> _bcast;
    readonly delegate* unmanaged<nint, int> _barrier;
    readonly delegate* unmanaged<nint, int, int> _abort;
    readonly delegate* unmanaged<byte*, int*, int> _libraryVersion;
    readonly delegate* unmanaged<nint, int, nint, int, int, nint, int> _send;
    readonly delegate* unmanaged<nint, int, nint, int, int, nint, nint, int> _recv;

    public int Rank { get; }
    public int Size { get; }
    public string Library => _abi.Library;

    /// <summary>Counts are C ints; larger buffers go in pieces of this many elements.</summary>
    const int MaxCount = 1 << 30;
    const int ThreadSerialized = 2; // MPI_THREAD_SERIALIZED: the same value in every implementation's mpi.h

    Mpi(MpiAbi abi)
    {
        _abi = abi;
        _initThread = (delegate* unmanaged<int*, nint*, int, int*, int>)abi.Function("MPI_Init_thread");
        _initialized = (delegate* unmanaged<int*, int>)abi.Function("MPI_Initialized");
        _finalized = (delegate* unmanaged<int*, int>)abi.Function("MPI_Finalized");
        _finalize = (delegate* unmanaged<int>)abi.Function("MPI_Finalize");
        _commRank = (delegate* unmanaged<nint, int*, int>)abi.Function("MPI_Comm_rank");
        _commSize = (delegate* unmanaged<nint, int*, int>)abi.Function("MPI_Comm_size");
        _allreduce = (delegate* unmanaged<nint, nint, int, nint, nint, nint, int>)abi.Function("MPI_Allreduce");
        _reduceScatterBlock = (delegate* unmanaged<nint, nint, int, nint, nint, nint, int>)abi.Function("MPI_Reduce_scatter_block");
        _allgather = (delegate* unmanaged<nint, int, nint, nint, int, nint, nint, int>)abi.Function("MPI_Allgather");
        _bcast = (delegate* unmanaged<nint, int, nint, int, nint, int>)abi.Function("MPI_Bcast");
        _barrier = (delegate* unmanaged<nint, int>)abi.Function("MPI_Barrier");
        _abort = (delegate* unmanaged<nint, int, int>)abi.Function("MPI_Abort");
        _libraryVersion = (delegate* unmanaged<byte*, int*, int>)abi.Function("MPI_Get_library_version");
        _send = (delegate* unmanaged<nint, int, nint, int, int, nint, int>)abi.Function("MPI_Send");
        _recv = (delegate* unmanaged<nint, int, nint, int, int, nint, nint, int>)abi.Function("MPI_Recv");

        int flag;
        Check(_initialized(&flag), "MPI_Initialized");
        if (flag == 0)
        {
            // Serialized: .NET may run the loop's continuation on another thread, never two calls at once.
            int provided;
            Check(_initThread(null, null, ThreadSerialized, &provided), "MPI_Init_thread");
        }
        int rank, size;
        Check(_commRank(abi.CommWorld, &rank), "MPI_Comm_rank");
        Check(_commSize(abi.CommWorld, &size), "MPI_Comm_size");
        (Rank, Size) = (rank, size);
    }

    public static Mpi Initialize() => new(MpiAbi.Load());

    /// <summary>The library's own description (MPI_Get_library_version), first line.</summary>
    public string Version()
    {
        var buffer = new byte[8192]; // MPI_MAX_LIBRARY_VERSION_STRING is 256 in Open MPI, 8192 in MPICH
        int length;
        fixed (byte* p = buffer) Check(_libraryVersion(p, &length), "MPI_Get_library_version");
        return System.Text.Encoding.UTF8.GetString(buffer, 0, Math.Max(0, length)).TrimEnd('\0').Split('\n')[0].Trim();
    }

    public void Finalize_()
    {
        int flag;
        Check(_finalized(&flag), "MPI_Finalized");
        if (flag == 0) Check(_finalize(), "MPI_Finalize");
    }

    /// <summary>Sums (or maxes) <paramref name="count"/> elements across ranks, in place: every rank gets the result.</summary>
    public void AllReduce(nint buffer, long count, Type type, Op op = Op.Sum)
    {
        int size = ElementSize(type);
        for (long done = 0; done < count; done += MaxCount)
        {
            int n = (int)Math.Min(MaxCount, count - done);
            Check(_allreduce(_abi.InPlace, buffer + (nint)(done * size), n, Handle(type), Handle(op), _abi.CommWorld), "MPI_Allreduce");
        }
    }

    /// <summary>
    /// <paramref name="send"/> holds Size blocks of <paramref name="blockCount"/> elements; rank r receives into
    /// <paramref name="receive"/> the sum over ranks of block r.
    /// </summary>
    public void ReduceScatterBlock(nint send, nint receive, int blockCount, Type type) =>
        Check(_reduceScatterBlock(send, receive, blockCount, Handle(type), Handle(Op.Sum), _abi.CommWorld), "MPI_Reduce_scatter_block");

    /// <summary>
    /// Each rank's <paramref name="blockCount"/> elements, already at block Rank of <paramref name="buffer"/>, are copied
    /// into block r of every rank's buffer (in place).
    /// </summary>
    public void AllGatherInPlace(nint buffer, int blockCount, Type type) =>
        Check(_allgather(_abi.InPlace, 0, 0, buffer, blockCount, Handle(type), _abi.CommWorld), "MPI_Allgather");

    public void Broadcast(nint buffer, long count, Type type, int root)
    {
        int size = ElementSize(type);
        for (long done = 0; done < count; done += MaxCount)
        {
            int n = (int)Math.Min(MaxCount, count - done);
            Check(_bcast(buffer + (nint)(done * size), n, Handle(type), root, _abi.CommWorld), "MPI_Bcast");
        }
    }

    /// <summary>Point to point: <paramref name="count"/> bytes to rank <paramref name="destination"/> (blocking).</summary>
    public void Send(nint buffer, int count, int destination, int tag) =>
        Check(_send(buffer, count, _abi.Byte, destination, tag, _abi.CommWorld), "MPI_Send");

    public void Receive(nint buffer, int count, int source, int tag) =>
        Check(_recv(buffer, count, _abi.Byte, source, tag, _abi.CommWorld, _abi.StatusIgnore), "MPI_Recv");

    public void Barrier() => Check(_barrier(_abi.CommWorld), "MPI_Barrier");

    /// <summary>Ends every rank of the job (mpirun kills the others); does not return.</summary>
    public void Abort(int code) => _abort(_abi.CommWorld, code);

    public static int ElementSize(Type type) => type switch { Type.Float => 4, Type.Double => 8, Type.Int64 => 8, _ => 1 };

    nint Handle(Type type) => type switch { Type.Float => _abi.Float, Type.Double => _abi.Double, Type.Int64 => _abi.Int64, _ => _abi.Byte };
    nint Handle(Op op) => op == Op.Sum ? _abi.OpSum : _abi.OpMax;

    static void Check(int code, string function)
    {
        // MPI_SUCCESS is 0 everywhere; with the default handler (errors are fatal) a failure rarely gets here.
        if (code != 0) throw new InvalidOperationException($"{function} failed with MPI error code {code}");
    }
}
