using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Hub;

namespace Axolotl.Tests.Hub;

/// <summary>Model and dataset ids resolved through a Hugging Face cache laid out by hand as huggingface_hub lays it out.</summary>
public class HubCacheTests
{
    const string CommitA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const string CommitB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    static readonly string TinyLlama = TestSetup.Data("reference", "models", "tiny-llama");

    /// <summary>
    /// Adds snapshot <paramref name="commit"/> of a repo: each file's bytes in blobs/{sha256}, the snapshot file a
    /// relative symlink to it, and refs/{refName} holding the commit (no newline, as huggingface_hub writes it).
    /// </summary>
    internal static string AddSnapshot(string root, string repoFolder, string commit, IEnumerable<(string Name, string Source)> files, string? refName = "main")
    {
        var repo = Path.Combine(root, repoFolder);
        var blobs = Directory.CreateDirectory(Path.Combine(repo, "blobs")).FullName;
        var snapshot = Path.Combine(repo, "snapshots", commit);
        foreach (var (name, source) in files)
        {
            var hash = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(source)));
            var blob = Path.Combine(blobs, hash);
            if (!File.Exists(blob)) File.Copy(source, blob);
            var link = Path.Combine(snapshot, name);
            Directory.CreateDirectory(Path.GetDirectoryName(link)!);
            var up = string.Concat(Enumerable.Repeat("../", name.Count(c => c == '/') + 2));
            File.CreateSymbolicLink(link, $"{up}blobs/{hash}");
        }
        if (refName != null)
        {
            Directory.CreateDirectory(Path.Combine(repo, "refs"));
            File.WriteAllText(Path.Combine(repo, "refs", refName), commit);
        }
        return snapshot;
    }

    static IEnumerable<(string, string)> FilesOf(params string[] folders) =>
        folders.SelectMany(f => Directory.GetFiles(f).Select(p => (Path.GetFileName(p), p)));

    /// <summary>Offline, so that no test here can reach a network: these are about the cache alone.</summary>
    static HubClient CacheOnly(string root) => new(new HfCache(root, offline: true), "http://127.0.0.1:9");

    static AxolotlConfig Config(string baseModel, params string[] datasets) => new()
    {
        BaseModel = baseModel,
        Datasets = datasets.Select(d => new DatasetConfig { Path = d }).ToList(),
    };

    [Fact]
    public void Cache_root_follows_huggingface_hub_environment()
    {
        HfCache From(params (string Key, string Value)[] vars) => HfCache.FromEnvironment(k => vars.FirstOrDefault(v => v.Key == k).Value);
        Assert.Equal("/c", From(("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")).Root);
        Assert.Equal(Path.Combine("/h", "hub"), From(("HF_HOME", "/h"), ("XDG_CACHE_HOME", "/x")).Root);
        Assert.Equal(Path.Combine("/x", "huggingface", "hub"), From(("XDG_CACHE_HOME", "/x")).Root);
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        Assert.Equal(Path.Combine(home + "/.cache", "huggingface", "hub"), From().Root);
        Assert.True(From(("HF_HUB_OFFLINE", "1")).Offline);
        Assert.False(From(("HF_HUB_OFFLINE", "0")).Offline);
    }

    [Fact]
    public void Resolves_main_and_an_explicit_commit_to_snapshots_whose_files_read_through_the_symlinks()
    {
        using var dir = TestSetup.TempDir();
        var a = AddSnapshot(dir.Path, "models--org--tiny-llama", CommitA, FilesOf(TinyLlama));
        var b = AddSnapshot(dir.Path, "models--org--tiny-llama", CommitB, FilesOf(TinyLlama), refName: null);
        var cache = new HfCache(dir.Path);
        Assert.Equal(a, cache.Resolve("org/tiny-llama", "model", null, out _));
        Assert.Equal(b, cache.Resolve("org/tiny-llama", "model", CommitB, out _));
        Assert.Null(cache.Resolve("org/tiny-llama", "model", "v2", out var why));
        Assert.Contains("revision 'v2'", why);
        Assert.True(new FileInfo(Path.Combine(a, "model.safetensors")).LinkTarget != null);
        Assert.Equal(File.ReadAllBytes(Path.Combine(TinyLlama, "model.safetensors")), File.ReadAllBytes(Path.Combine(a, "model.safetensors")));

        var config = Config("org/tiny-llama");
        config.RevisionOfModel = CommitB;
        var notes = PathResolver.Resolve(config, CacheOnly(dir.Path));
        Assert.Equal(b, config.BaseModel);
        Assert.Equal("org/tiny-llama", config.BaseModelRepoId);
        Assert.Contains($"base_model: org/tiny-llama@{CommitB} → {b}", notes);
        Assert.Equal(64, Axolotl.Models.DecoderConfig.FromFolder(config.BaseModel).HiddenSize);
    }

    [Fact]
    public void An_existing_local_path_wins_over_the_cache()
    {
        using var dir = TestSetup.TempDir();
        var id = $"hubtest-{Guid.NewGuid():N}/tiny-llama";
        AddSnapshot(dir.Path, $"models--{id.Replace("/", "--")}", CommitA, FilesOf(TinyLlama));
        // A relative path is relative to the working directory, so the local twin has to live there.
        var local = Directory.CreateDirectory(Path.Combine(Directory.GetCurrentDirectory(), id)).FullName;
        try
        {
            var config = Config(id);
            Assert.Empty(PathResolver.Resolve(config, CacheOnly(dir.Path)));
            Assert.Equal(id, config.BaseModel);
            Assert.Null(config.BaseModelRepoId);
        }
        finally { Directory.Delete(Path.GetDirectoryName(local)!, true); }
    }

    [Fact]
    public void A_dataset_snapshot_reads_its_train_files_in_order_and_refuses_what_it_cannot_read()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["a.jsonl"], "{\"text\": \"first\"}\n{\"text\": \"second\"}\n");
        File.WriteAllText(dir["b.json"], """[{"text": "third"}]""");
        File.WriteAllText(dir["c.jsonl"], "{\"text\": \"held out\"}\n");
        File.WriteAllText(dir["readme"], "# card");
        var snapshot = AddSnapshot(dir.Path, "datasets--org--mini", CommitA,
            [("data/train-00001-of-00002.json", dir["b.json"]), ("data/train-00000-of-00002.jsonl", dir["a.jsonl"]),
             ("data/test-00000-of-00001.jsonl", dir["c.jsonl"]), ("README.md", dir["readme"]), (".gitattributes", dir["readme"])]);
        var config = Config(TinyLlama, "org/mini");
        PathResolver.Resolve(config, CacheOnly(dir.Path));
        Assert.Equal(snapshot, config.Datasets[0].Path);
        var rows = RowReader.Read(config.Datasets[0].Path, null);
        Assert.Equal(["first", "second", "third"], rows.Select(r => (string)r.Fields["text"]!));
        Assert.EndsWith("train-00001-of-00002.json", rows[2].File);

        AddSnapshot(dir.Path, "datasets--org--mini", CommitB, [("data/train.parquet", dir["readme"]), ("data/more.jsonl", dir["a.jsonl"])], refName: null);
        var e = Assert.Throws<UserError>(() => RowReader.Read(Path.Combine(dir.Path, "datasets--org--mini", "snapshots", CommitB), null));
        Assert.Contains("data/train.parquet", e.Message);
        Assert.DoesNotContain("more.jsonl", e.Message);
    }

    [Fact]
    public async Task Train_from_ids_in_the_cache_named_by_HF_HUB_CACHE()
    {
        using var dir = TestSetup.TempDir();
        var cache = Directory.CreateDirectory(dir["hub"]).FullName;
        AddSnapshot(cache, "models--org--tiny-llama", CommitA, FilesOf(TinyLlama, TestSetup.Data("tok-tiny512")));
        File.WriteAllText(dir["train.jsonl"], string.Concat(Enumerable.Range(0, 4).Select(i =>
            new JsonObject { ["instruction"] = $"Count to {i}.", ["input"] = "", ["output"] = string.Join(" ", Enumerable.Range(0, i + 1)) }.ToJsonString() + "\n")));
        AddSnapshot(cache, "datasets--org--counting", CommitB, [("train.jsonl", dir["train.jsonl"])]);
        File.WriteAllText(dir["c.yml"], $"""
            base_model: org/tiny-llama
            datasets:
              - path: org/counting
                type: alpaca
            adapter: lora
            lora_r: 4
            lora_alpha: 8
            lora_target_modules: [q_proj, v_proj]
            sequence_len: 512
            learning_rate: 0.001
            max_steps: 1
            output_dir: {dir["out"]}
            """);

        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "axolotl.dll"));
        foreach (var a in new[] { "train", dir["c.yml"] }) start.ArgumentList.Add(a);
        start.Environment["HF_HUB_CACHE"] = cache;
        // The cache holds everything; should anything be asked for, it goes nowhere.
        start.Environment["HF_ENDPOINT"] = "http://127.0.0.1:9";
        using var process = Process.Start(start)!;
        var stdoutTask = process.StandardOutput.ReadToEndAsync();
        var stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        var stdout = await stdoutTask;
        Assert.True(process.ExitCode == 0, stderr + stdout);
        Assert.Contains($"base_model: org/tiny-llama → {Path.Combine(cache, "models--org--tiny-llama", "snapshots", CommitA)}", stdout);
        Assert.Contains($"datasets[0].path: org/counting → {Path.Combine(cache, "datasets--org--counting", "snapshots", CommitB)}", stdout);
        Assert.Contains("4 rows", stdout);
        var adapterConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], "adapter_config.json")))!;
        Assert.Equal("org/tiny-llama", (string)adapterConfig["base_model_name_or_path"]!);
        Assert.True(File.Exists(Path.Combine(dir["out"], "tokenizer.json")));
    }
}
