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
