using System.Runtime.InteropServices;
using System.Text;

namespace Axolotl.Runtime;

/// <summary>
/// Which malloc serves libtorch's tensors. glibc's (the default) is the fastest here: with its mmap threshold raised
/// (TorchRuntime) freed buffers are reused without page faults, at the price of a fragmented heap that holds free
/// memory beside what is in use. jemalloc fragments less and returns unused pages to the system: on the quickstart
/// (packed, micro_batch_size 2) RSS peaked at ~415 MiB against glibc's ~680 MiB, but a LoRA step of the 58M benchmark
/// shape ran at 584-660 tokens/s against glibc's 1,569-1,657 (page faults on re-used memory; 1,288 with its purging
/// turned off), so it is a choice for memory-bound runs, not the default: <c>AXOLOTL_MALLOC=jemalloc</c>. It can only
/// replace malloc for libtorch when preloaded before the process starts, so the CLI then re-executes itself once with
/// LD_PRELOAD set (Debian: <c>apt-get install libjemalloc2</c>), as PyTorch's CPU launchers do.
/// </summary>
internal static class NativeAllocator
{
    /// <summary><c>jemalloc</c> asks for jemalloc; anything else (or nothing) keeps glibc's malloc.</summary>
    public const string Variable = "AXOLOTL_MALLOC";
    const string Reexecuted = "AXOLOTL_MALLOC_REEXEC";

    static readonly string[] JemallocPaths =
    [
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
        "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
    ];

    /// <summary>"jemalloc" when it is loaded into this process, else "glibc" (or the platform's own).</summary>
    public static string Current { get; } =
        !OperatingSystem.IsLinux() ? "system"
        : File.Exists("/proc/self/maps") && File.ReadLines("/proc/self/maps").Any(l => l.Contains("libjemalloc", StringComparison.Ordinal)) ? "jemalloc"
        : "glibc";

    /// <summary>
    /// With <c>AXOLOTL_MALLOC=jemalloc</c>, replaces this process (same PID, arguments and environment) by one with
    /// jemalloc preloaded; returns when not asked, when it is loaded already, or when it cannot be (then with one line
    /// on standard error saying why), and the process goes on with glibc's malloc. Call it first thing in Main.
    /// </summary>
    public static void ApplyChoice()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable(Variable) != "jemalloc" || Current == "jemalloc") return;
        if (Environment.GetEnvironmentVariable(Reexecuted) is not null)
        {
            Console.Error.WriteLine("warning: AXOLOTL_MALLOC=jemalloc: jemalloc did not load (LD_PRELOAD was ignored); glibc's malloc runs.");
            return;
        }
        var library = JemallocPaths.FirstOrDefault(File.Exists);
        if (library is null)
        {
            Console.Error.WriteLine("warning: AXOLOTL_MALLOC=jemalloc, but libjemalloc.so.2 is not installed (Debian: apt-get install libjemalloc2); glibc's malloc runs.");
            return;
        }
        if (!File.Exists("/proc/self/cmdline")) return;
        var argv = File.ReadAllText("/proc/self/cmdline", Encoding.UTF8).TrimEnd('\0').Split('\0');
        var environment = Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
            .ToDictionary(e => (string)e.Key, e => (string?)e.Value ?? "");
        environment["LD_PRELOAD"] = environment.TryGetValue("LD_PRELOAD", out var preload) && preload.Length > 0 ? $"{library}:{preload}" : library;
        environment[Reexecuted] = "1";
        var envp = environment.Select(e => $"{e.Key}={e.Value}").ToArray();
        Execve("/proc/self/exe", [.. argv, null], [.. envp, null]); // returns only on failure
        Console.Error.WriteLine($"warning: AXOLOTL_MALLOC=jemalloc: re-executing with jemalloc failed (errno {Marshal.GetLastPInvokeError()}); glibc's malloc runs.");
    }

    [DllImport("libc", EntryPoint = "execve", SetLastError = true)]
    static extern int Execve(string path, string?[] argv, string?[] envp);
}
