using System.Runtime.CompilerServices;

namespace Axolotl.Tests;

static class TestSetup
{
    [ModuleInitializer]
    internal static void LoadTorch() => Axolotl.Runtime.TorchRuntime.EnsureLoaded();

    public static string Data(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "testdata", .. parts]);

    /// <summary>A fresh folder under the system temp dir, removed when disposed.</summary>
    public static TempDir TempDir() => new();
}

sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("axolotl-test-").FullName;
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}

/// <summary>
/// Tests that need torch's global random generator to themselves (dropout masks, seeded inits): run alone, since any
/// test running beside them would draw from the same generator.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class GlobalTorchRng
{
    public const string Name = "global torch RNG";
}
