using System.Runtime.InteropServices;
using System.Text;

namespace Axolotl.Runtime;

/// <summary>
/// Makes TorchSharp's native library loadable before anything touches <c>torch</c>.
/// </summary>
/// <remarks>
/// libLibTorchSharp.so (TorchSharp 0.107) is linked against GLIBCXX_3.4.32 for a single symbol,
/// <c>_ZSt21ios_base_library_initv</c>, which it references but never calls. Debian 12's libstdc++ stops at 3.4.30,
/// so the dynamic loader refuses the library. Marking that version requirement weak (VER_FLG_WEAK in
/// .gnu.version_r) turns the hard failure into nothing at all. The copy in the build output is patched in place:
/// loading a second copy of libtorch from another folder aborts the process.
/// </remarks>
internal static class TorchRuntime
{
    const string NeededVersion = "GLIBCXX_3.4.32";
    static readonly object Gate = new();
    static bool _ready;

    /// <summary>Patches the native library if this system needs it, then initialises TorchSharp once.</summary>
    public static void EnsureLoaded()
    {
        if (_ready) return;
        lock (Gate)
        {
            if (_ready) return;
            var library = CandidateLibraryPaths().FirstOrDefault(File.Exists);
            if (OperatingSystem.IsLinux()) { KeepLargeBuffersInHeap(); BoundPrimitiveCaches(); }
            if (library != null && OperatingSystem.IsLinux())
            {
                if (!SystemLibStdCxxHas(NeededVersion)) ElfVersionPatcher.MarkVersionNeedWeak(library, NeededVersion);
                // Load it ourselves first: the loader's own reason (a missing symbol version, a missing libtorch file)
                // is the sentence a user needs; TorchSharp would hide it behind a generic message and a retry from a
                // second folder. TorchSharp's later load of the same path reuses this handle.
                try { NativeLibrary.Load(library); }
                catch (DllNotFoundException e)
                {
                    throw new UserError($"TorchSharp's native library cannot be loaded: {e.Message.Split('\n')[0].Trim()}");
                }
            }
            try
            {
                TorchSharp.torch.InitializeDeviceType(TorchSharp.DeviceType.CPU);
            }
            catch (Exception e)
            {
                var inner = e;
                while (inner.InnerException != null) inner = inner.InnerException;
                throw new UserError(
                    $"TorchSharp's native library (libtorch 2.10) could not be loaded from {AppContext.BaseDirectory}: {inner.Message.Split('\n')[0].Trim()}");
            }
            _ready = true;
        }
    }

    /// <summary>
    /// glibc serves each allocation above its mmap threshold (dynamic, from 128 KiB) with a fresh mmap and unmaps it on
    /// free, so every training step page-faults its activations and logits in again: a quarter of a LoRA step's time
    /// went to the kernel, and twice that on a loaded machine. Raising the threshold to its 32 MiB maximum, and the trim
    /// threshold so freed memory stays, lets the heap reuse the same pages step after step. The peak is unchanged.
    /// </summary>
    static void KeepLargeBuffersInHeap()
    {
        const int M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3;
        try
        {
            Mallopt(M_MMAP_THRESHOLD, 32 << 20);
            Mallopt(M_TRIM_THRESHOLD, int.MaxValue);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { } // not glibc (musl): its allocator's defaults
    }

    /// <summary>
    /// oneDNN and ideep (libtorch's CPU matmul path) each keep up to 1,024 compiled primitives, keyed by shape, with
    /// their descriptors and scratch buffers; a run whose shapes vary (unpacked batches of several lengths, packed
    /// attention) keeps adding entries, and the heap grew with them for the whole of a 1,000-step run (quickstart,
    /// packed: glibc's bytes in use 122 → 216 MiB and RSS 974 → 1,877 MiB from step 100 to 1,000, the freed scratch
    /// fragmenting the heap). Capped at <see cref="PrimitiveCacheCapacity"/> each, in use stays at 87-89 MiB and RSS
    /// within a few percent, at the same tokens/s (quickstart packed and unpacked, 58M benchmark shape; README,
    /// "Memory at real model sizes"). A value the user exported for either variable is kept.
    /// </summary>
    static void BoundPrimitiveCaches()
    {
        foreach (var name in new[] { "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY" })
        {
            try { SetEnv(name, PrimitiveCacheCapacity.ToString(System.Globalization.CultureInfo.InvariantCulture), overwrite: 0); }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        }
    }

    /// <summary>Entries each primitive cache keeps: above the ~35 distinct matmul shapes of a LoRA step (forward, both
    /// backward products, the head, attention), so a step's own primitives are found again in the next step.</summary>
    internal const int PrimitiveCacheCapacity = 64;

    // The C library's environment, which libtorch reads: Environment.SetEnvironmentVariable changes only .NET's copy.
    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int Mallopt(int param, int value);

    static IEnumerable<string> CandidateLibraryPaths()
    {
        var baseDir = AppContext.BaseDirectory;
        yield return Path.Combine(baseDir, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        yield return Path.Combine(baseDir, "libLibTorchSharp.so");
    }

    /// <summary>Whether the libstdc++ this process uses (the .NET runtime already loaded it) defines <paramref name="version"/>.</summary>
    static bool SystemLibStdCxxHas(string version)
    {
        var path = LoadedLibStdCxxPath();
        if (path == null) return false;
        try
        {
            var bytes = File.ReadAllBytes(path);
            var needle = Encoding.ASCII.GetBytes(version + "\0");
            return bytes.AsSpan().IndexOf(needle) >= 0;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    static string? LoadedLibStdCxxPath()
    {
        var loaded = Hardware.MappedFiles().FirstOrDefault(f => Path.GetFileName(f).StartsWith("libstdc++.so", StringComparison.Ordinal));
        if (loaded != null) return loaded;
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu" })
        {
            var candidate = Path.Combine(dir, "libstdc++.so.6");
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}

/// <summary>Edits the version-needed records of an ELF64 little-endian shared object.</summary>
internal static class ElfVersionPatcher
{
    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 0x2;

    /// <summary>
    /// Sets VER_FLG_WEAK on every .gnu.version_r entry named <paramref name="versionName"/>.
    /// Returns the number of entries changed (0 when already weak or absent).
    /// </summary>
    public static int MarkVersionNeedWeak(string path, string versionName)
    {
        // Read-only first: once patched, an install owned by another account (root, say) must still load.
        var data = File.ReadAllBytes(path);
        var changes = FindFlagOffsets(data, versionName)
            .Where(o => (BitConverter.ToUInt16(data, o) & VerFlgWeak) == 0)
            .ToList();
        if (changes.Count == 0) return 0;
        FileStream file;
        try { file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite); }
        catch (UnauthorizedAccessException)
        {
            throw new UserError($"{path} needs a one-time patch on this system (its libstdc++ lacks {versionName}), but this account may not write it; run axolotl once as the file's owner.");
        }
        using var _ = file;
        foreach (var offset in changes)
        {
            var flags = (ushort)(BitConverter.ToUInt16(data, offset) | VerFlgWeak);
            file.Position = offset;
            file.Write(BitConverter.GetBytes(flags));
        }
        file.Flush(true);
        return changes.Count;
    }

    /// <summary>Whether every .gnu.version_r entry named <paramref name="versionName"/> is weak (false when none exist).</summary>
    public static bool IsVersionNeedWeak(string path, string versionName)
    {
        var data = File.ReadAllBytes(path);
        var offsets = FindFlagOffsets(data, versionName).ToList();
        return offsets.Count > 0 && offsets.All(o => (BitConverter.ToUInt16(data, o) & VerFlgWeak) != 0);
    }

    /// <summary>File offsets of the vna_flags field of each Vernaux entry with the given name.</summary>
    static IEnumerable<int> FindFlagOffsets(byte[] elf, string versionName)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != 'E' || elf[2] != 'L' || elf[3] != 'F')
            throw new InvalidDataException("not an ELF file");
        if (elf[4] != 2 || elf[5] != 1) throw new InvalidDataException("only ELF64 little-endian is supported");
        long shoff = BitConverter.ToInt64(elf, 0x28);
        int shentsize = BitConverter.ToUInt16(elf, 0x3A);
        int shnum = BitConverter.ToUInt16(elf, 0x3C);
        var results = new List<int>();
        for (int i = 0; i < shnum; i++)
        {
            int sh = checked((int)(shoff + (long)i * shentsize));
            if (BitConverter.ToUInt32(elf, sh + 4) != ShtGnuVerneed) continue;
            long offset = BitConverter.ToInt64(elf, sh + 0x18);
            uint link = BitConverter.ToUInt32(elf, sh + 0x28);
            uint count = BitConverter.ToUInt32(elf, sh + 0x2C); // sh_info: number of Verneed entries
            int strSh = checked((int)(shoff + (long)link * shentsize));
            long strOff = BitConverter.ToInt64(elf, strSh + 0x18);

            long vn = offset;
            for (uint n = 0; n < count; n++)
            {
                int vnCnt = BitConverter.ToUInt16(elf, (int)vn + 2);
                uint vnAux = BitConverter.ToUInt32(elf, (int)vn + 8);
                uint vnNext = BitConverter.ToUInt32(elf, (int)vn + 12);
                long aux = vn + vnAux;
                for (int a = 0; a < vnCnt; a++)
                {
                    uint nameOff = BitConverter.ToUInt32(elf, (int)aux + 8);
                    if (ReadCString(elf, strOff + nameOff) == versionName) results.Add((int)aux + 4);
                    uint vnaNext = BitConverter.ToUInt32(elf, (int)aux + 12);
                    if (vnaNext == 0) break;
                    aux += vnaNext;
                }
                if (vnNext == 0) break;
                vn += vnNext;
            }
        }
        return results;
    }

    static string ReadCString(byte[] data, long start)
    {
        int s = checked((int)start);
        int end = Array.IndexOf(data, (byte)0, s);
        return Encoding.ASCII.GetString(data, s, (end < 0 ? data.Length : end) - s);
    }
}
