using System.Runtime.CompilerServices;

namespace Axolotl.Tests;

static class TestSetup
{
    [ModuleInitializer]
    internal static void LoadTorch() => Axolotl.Runtime.TorchRuntime.EnsureLoaded();

    public static string Data(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "testdata", .. parts]);

    /// <summary>
    /// The reference batch (step3_batch.json) as pre-tokenized JSONL rows, row i cut to <paramref name="length"/>(i)
    /// tokens so that rows differ in length. Returns the file's path.
    /// </summary>
    public static string WriteReferenceRows(TempDir dir, Func<int, int> length)
    {
        var rows = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Data("reference", "step3_batch.json")))!["input_ids"]!.AsArray();
        File.WriteAllLines(dir["data.jsonl"], rows.Select((r, i) => new System.Text.Json.Nodes.JsonObject
        {
            ["input_ids"] = new System.Text.Json.Nodes.JsonArray(r!.AsArray().Take(length(i)).Select(x => (System.Text.Json.Nodes.JsonNode)(int)x!).ToArray()),
        }.ToJsonString()));
        return dir["data.jsonl"];
    }

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
