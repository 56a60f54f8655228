using System.Runtime.InteropServices;

namespace Axolotl.Runtime;

public static class Hardware
{
    /// <summary>Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated and slower than fp32.</summary>
    public static bool CpuHasBf16()
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo")
                .Where(l => l.StartsWith("flags", StringComparison.Ordinal))
                .Take(1)
                .Any(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries) is var flags && (flags.Contains("avx512_bf16") || flags.Contains("amx_bf16")));
        }
        catch (IOException) { return false; }
    }

    /// <summary>
    /// Device memory in use on the current GPU (total − free from cudaMemGetInfo), in bytes; -1 without a loadable CUDA
    /// runtime. TorchSharp 0.107 exposes none of torch.cuda's allocator statistics (max_memory_allocated …), so this
    /// is the nearest figure: what PyTorch's caching allocator holds (it keeps freed blocks, so this follows its peak)
    /// plus the CUDA context and anything else on the GPU.
    /// </summary>
    public static unsafe long GpuMemoryInUseBytes()
    {
        // Asking would create a CUDA context in a process that does not use the GPU.
        if (!GpuInUse || CudaMemGetInfo.Value is not { } getInfo) return -1;
        nuint free, total;
        return ((delegate* unmanaged<nuint*, nuint*, int>)getInfo)(&free, &total) == 0 ? (long)(total - free) : -1;
    }

    /// <summary>The largest <see cref="GpuMemoryInUseBytes"/> seen by this process's calls so far (-1: none).</summary>
    public static long PeakGpuMemoryInUseBytes()
    {
        long now = GpuMemoryInUseBytes();
        lock (PeakGate) return _peakGpuBytes = Math.Max(_peakGpuBytes, now);
    }

    /// <summary>Set once a model is placed on a GPU (ModelLoading.Place).</summary>
    public static bool GpuInUse { get; internal set; }

    static readonly object PeakGate = new();
    static long _peakGpuBytes = -1;

    /// <summary>cudaMemGetInfo from the CUDA runtime libtorch loaded: its versioned name, or the one shipped beside us (libcudart-HASH.so.12).</summary>
    static readonly Lazy<IntPtr?> CudaMemGetInfo = new(() =>
    {
        var candidates = new List<string> { "libcudart.so.12", "libcudart.so" };
        try { candidates.AddRange(Directory.EnumerateFiles(AppContext.BaseDirectory, "libcudart*.so*", SearchOption.AllDirectories)); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        foreach (var name in candidates)
            if (NativeLibrary.TryLoad(name, out var handle) && NativeLibrary.TryGetExport(handle, "cudaMemGetInfo", out var export))
                return export;
        return null;
    });

    /// <summary>The process's peak resident memory (VmHWM) in KiB, or -1 where /proc does not tell.</summary>
    public static long PeakRssKb()
    {
        try
        {
            var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
            return line == null ? -1 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (IOException) { return -1; }
    }
}
