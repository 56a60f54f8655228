using System.Runtime.InteropServices;

namespace Axolotl.Runtime;

internal static class Hardware
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
    public static long PeakRssKb() => ProcStatusKb("VmHWM");

    /// <summary>The process's resident memory now (VmRSS) in KiB, or -1 where /proc does not tell.</summary>
    public static long RssKb() => ProcStatusKb("VmRSS");

    /// <summary>
    /// Bytes this process could still take: MemAvailable of /proc/meminfo, lowered to what the cgroup's memory.max
    /// leaves above memory.current when a container limit is tighter; -1 where neither tells.
    /// </summary>
    public static long AvailableMemoryBytes()
    {
        long available = ReadProcFields("/proc/meminfo").TryGetValue("MemAvailable", out var kb) ? kb * 1024 : -1;
        long? cgroupLeft = CgroupMemoryLeftBytes();
        if (cgroupLeft is long left && (available < 0 || left < available)) available = left;
        return available;
    }

    /// <summary>Total physical memory (MemTotal) in bytes, -1 where /proc does not tell.</summary>
    public static long TotalMemoryBytes() =>
        ReadProcFields("/proc/meminfo").TryGetValue("MemTotal", out var kb) ? kb * 1024 : -1;

    /// <summary>The CPU's model name from /proc/cpuinfo, or "unknown".</summary>
    public static string CpuModelName()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return line?[(line.IndexOf(':') + 1)..].Trim() ?? "unknown";
        }
        catch (IOException) { return "unknown"; }
        catch (UnauthorizedAccessException) { return "unknown"; }
    }

    /// <summary>The paths of the files mapped into this process (/proc/self/maps), in map order, with repeats.</summary>
    public static IEnumerable<string> MappedFiles()
    {
        List<string> files = [];
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
                if (line.IndexOf('/') is >= 0 and var slash) files.Add(line[slash..].Trim());
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return files;
    }

    /// <summary>glibc's heap statistics (mallinfo2) in bytes: what the heap holds from the system, what is in use, what
    /// is free inside it, and what sits in separate mmapped chunks; null where the C library has no mallinfo2.</summary>
    public static MallocStats? HeapStats()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            var info = Mallinfo2();
            return new MallocStats((long)info.arena, (long)info.uordblks, (long)info.fordblks, (long)info.hblkhd);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    /// <summary>glibc's bytes in use plus separately mmapped chunks, without allocating (see <see cref="QuietMemoryProbe"/>).</summary>
    internal static long HeapLiveBytes()
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try { var info = Mallinfo2(); return (long)info.uordblks + (long)info.hblkhd; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return 0; }
    }

    /// <summary>One field of /proc/self/status in KiB, -1 when absent or unreadable.</summary>
    static long ProcStatusKb(string key) => ReadProcFields("/proc/self/status").TryGetValue(key, out var kb) ? kb : -1;

    /// <summary>A /proc key-value file (status, meminfo) read by <see cref="ParseProcFields"/>; empty when unreadable.</summary>
    static Dictionary<string, long> ReadProcFields(string path)
    {
        try { return ParseProcFields(File.ReadLines(path)); }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }

    /// <summary>
    /// "Key:   value [kB]" lines → key → value. The key ends at the first colon and the number is the first run of
    /// whitespace-separated text after it: the kernel pads with spaces or a tab and writes "VmHWM:\t10044244 kB" once
    /// the number has 8 digits, so splitting on a single space is wrong. Lines without a number are left out.
    /// </summary>
    public static Dictionary<string, long> ParseProcFields(IEnumerable<string> lines)
    {
        var fields = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var line in lines)
        {
            int colon = line.IndexOf(':');
            if (colon <= 0) continue;
            var words = line[(colon + 1)..].Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (words.Length > 0 && long.TryParse(words[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value))
                fields[line[..colon]] = value;
        }
        return fields;
    }

    /// <summary>cgroup v2 memory.max − memory.current of this process's cgroup; null without a limit (or cgroup v2).</summary>
    static long? CgroupMemoryLeftBytes()
    {
        try
        {
            // "0::/path" is the v2 entry of /proc/self/cgroup.
            var entry = File.ReadLines("/proc/self/cgroup").FirstOrDefault(l => l.StartsWith("0::", StringComparison.Ordinal));
            if (entry is null) return null;
            var dir = Path.Combine("/sys/fs/cgroup", entry[3..].TrimStart('/'));
            var max = File.ReadAllText(Path.Combine(dir, "memory.max")).Trim();
            if (max == "max" || !long.TryParse(max, out var limit)) return null;
            var current = long.Parse(File.ReadAllText(Path.Combine(dir, "memory.current")).Trim(), System.Globalization.CultureInfo.InvariantCulture);
            return Math.Max(0, limit - current);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException) { return null; }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct MallInfo2
    {
        public nuint arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    static extern MallInfo2 Mallinfo2();
}

/// <summary>
/// Resident bytes read without allocating managed memory, for threads that sample while
/// another thread trains. Why it matters: TorchSharp 0.107 does not keep a temporary <c>Scalar</c> (the 1 in
/// <c>a + b</c>, the 0.5 in <c>x * 0.5</c>) alive across its native call, so a garbage collection that another thread
/// triggers mid-call can let the finalizer free the Scalar while libtorch still reads it ("Expected false to be true"
/// from c10::Scalar::toBFloat16). A sampler that allocates every 10 ms made that happen once in ~550 quickstart steps;
/// this one reads /proc/self/statm into a reused buffer (and <see cref="Hardware.HeapLiveBytes"/> calls mallinfo2):
/// neither allocates.
/// </summary>
internal sealed class QuietMemoryProbe : IDisposable
{
    readonly Microsoft.Win32.SafeHandles.SafeFileHandle? _statm =
        OperatingSystem.IsLinux() && File.Exists("/proc/self/statm") ? File.OpenHandle("/proc/self/statm") : null;
    readonly byte[] _buffer = new byte[256];
    static readonly long PageBytes = Environment.SystemPageSize;

    /// <summary>VmRSS in bytes (statm's second field, in pages); -1 where there is no /proc.</summary>
    public long ResidentBytes()
    {
        if (_statm is null) return -1;
        int n = RandomAccess.Read(_statm, _buffer, 0);
        int i = 0;
        while (i < n && _buffer[i] != (byte)' ') i++;  // size field
        long pages = 0;
        for (i++; i < n && _buffer[i] is >= (byte)'0' and <= (byte)'9'; i++) pages = pages * 10 + (_buffer[i] - '0');
        return pages * PageBytes;
    }

    public void Dispose() => _statm?.Dispose();
}

/// <summary>glibc heap figures in bytes: Arena = taken from the system by brk, InUse = allocated, Free = free inside the
/// arena (kept, not returned), Mapped = chunks served by their own mmap.</summary>
internal sealed record MallocStats(long Arena, long InUse, long Free, long Mapped);
