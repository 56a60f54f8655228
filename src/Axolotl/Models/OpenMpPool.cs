using System.Runtime.InteropServices;

namespace Axolotl.Models;

/// <summary>
/// Runs the fused kernels' parallel chunks on the OpenMP threads libtorch itself uses (libgomp's GOMP_parallel with a
/// managed callback), not on .NET's thread pool. On a machine with as many cores as torch threads, libgomp's workers
/// spin for a while after each torch op; a .NET worker woken beside them competes for the same cores, and the kernel's
/// second half waits for a spinning thread to be descheduled (perf of 1B decoding: 22 % of samples in libgomp's spin
/// loop while the kernel ran). Handing the chunks to those threads puts the spin to use.
/// Found by scanning /proc/self/maps for the libgomp that libtorch loaded; absent (another platform, another OpenMP
/// runtime), <see cref="TryRun"/> returns false and the caller uses Parallel.For.
/// </summary>
internal static unsafe class OpenMpPool
{
    static readonly delegate* unmanaged<delegate* unmanaged<nint, void>, nint, uint, uint, void> Parallel;
    static readonly delegate* unmanaged<int> ThreadNumber, ThreadCount;

    static OpenMpPool()
    {
        if (Environment.GetEnvironmentVariable("AXOLOTL_KERNEL_THREADS") == "dotnet") return;
        try
        {
            var path = File.ReadLines("/proc/self/maps").Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                .Where(f => f.Length >= 6 && Path.GetFileName(f[5]).StartsWith("libgomp", StringComparison.Ordinal)).Select(f => f[5]).FirstOrDefault();
            if (path is null || !NativeLibrary.TryLoad(path, out var library)) return;
            if (NativeLibrary.TryGetExport(library, "GOMP_parallel", out var parallel)
                && NativeLibrary.TryGetExport(library, "omp_get_thread_num", out var number)
                && NativeLibrary.TryGetExport(library, "omp_get_num_threads", out var count))
            {
                Parallel = (delegate* unmanaged<delegate* unmanaged<nint, void>, nint, uint, uint, void>)parallel;
                ThreadNumber = (delegate* unmanaged<int>)number;
                ThreadCount = (delegate* unmanaged<int>)count;
            }
        }
        catch (IOException) { }
    }

    public static bool Available => Parallel != null;

    sealed class Work(int chunks, Action<int> body)
    {
        public readonly int Chunks = chunks;
        public readonly Action<int> Body = body;
        public Exception? Failure;
    }

    /// <summary>
    /// body(0) … body(chunks − 1) on torch's OpenMP threads (no more than torch's thread count: libgomp starts as many as
    /// asked); false when unavailable.
    /// </summary>
    public static bool TryRun(int chunks, Action<int> body)
    {
        if (!Available) return false;
        var work = new Work(chunks, body);
        var handle = GCHandle.Alloc(work);
        uint threads = (uint)Math.Max(1, Math.Min(chunks, TorchSharp.torch.get_num_threads()));
        try { Parallel(&Region, GCHandle.ToIntPtr(handle), threads, 0); }
        finally { handle.Free(); }
        if (work.Failure is { } failure) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        return true;
    }

    [UnmanagedCallersOnly]
    static void Region(nint data)
    {
        var work = (Work)GCHandle.FromIntPtr(data).Target!;
        try
        {
            // libgomp may give fewer threads than asked (nested regions, thread limits): each takes every n-th chunk.
            int thread = ThreadNumber(), threads = ThreadCount();
            for (int c = thread; c < work.Chunks; c += threads) work.Body(c);
        }
        catch (Exception e)
        {
            // An exception must not cross into libgomp; the calling thread rethrows it.
            Interlocked.CompareExchange(ref work.Failure, e, null);
        }
    }
}
