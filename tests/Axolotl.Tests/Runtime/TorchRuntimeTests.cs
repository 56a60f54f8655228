using Axolotl.Runtime;

namespace Axolotl.Tests.Runtime;

public class TorchRuntimeTests
{
    const string Version = "GLIBCXX_3.4.32";

    static string PackagedLibrary()
    {
        var packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                       ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return Path.Combine(packages, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
    }

    [Fact]
    public void Patching_marks_exactly_the_glibcxx_3_4_32_requirement_weak_once()
    {
        Assert.True(File.Exists(PackagedLibrary()), $"TorchSharp's native library is not in the NuGet cache at {PackagedLibrary()}");
        using var dir = TestSetup.TempDir();
        var copy = dir["libLibTorchSharp.so"];
        File.Copy(PackagedLibrary(), copy);
        Assert.False(ElfVersionPatcher.IsVersionNeedWeak(copy, Version));
        var original = File.ReadAllBytes(copy);

        Assert.Equal(1, ElfVersionPatcher.MarkVersionNeedWeak(copy, Version));
        Assert.True(ElfVersionPatcher.IsVersionNeedWeak(copy, Version));
        Assert.Equal(0, ElfVersionPatcher.MarkVersionNeedWeak(copy, Version)); // idempotent

        // One byte changed: the low byte of that entry's vna_flags.
        var patched = File.ReadAllBytes(copy);
        Assert.Equal(original.Length, patched.Length);
        Assert.Single(Enumerable.Range(0, original.Length), i => original[i] != patched[i]);
        Assert.False(ElfVersionPatcher.IsVersionNeedWeak(copy, "GLIBCXX_3.4"));
    }

    [Fact]
    public void Torch_is_loaded_in_this_process()
    {
        // The module initializer ran EnsureLoaded; a tensor op proves the native library is usable.
        using var t = TorchSharp.torch.arange(4);
        Assert.Equal(6, t.sum().item<long>());
    }

    [Fact]
    public void Non_elf_files_are_rejected()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["x.so"], "not an elf file at all, just some text padding it out past sixty-four bytes......");
        Assert.Throws<InvalidDataException>(() => ElfVersionPatcher.MarkVersionNeedWeak(dir["x.so"], Version));
    }
}
