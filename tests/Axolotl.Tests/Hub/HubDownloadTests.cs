using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Hub;

namespace Axolotl.Tests.Hub;

/// <summary>Downloads from a Hub served on 127.0.0.1 by <see cref="FakeHub"/> into a cache in a temp folder.</summary>
public class HubDownloadTests
{
    const string Commit = "cccccccccccccccccccccccccccccccccccccccc";
    static readonly string TinyLlama = TestSetup.Data("reference", "models", "tiny-llama");

    static byte[] Bytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>A sharded model repo: config, tokenizer, an index naming two LFS shards, and files a run never needs.</summary>
    static FakeHub.Repo ShardedModel(FakeHub hub, string id = "org/tiny", string? privateToken = null, string? gatedToken = null)
    {
        var repo = hub.Add($"model:{id}", new FakeHub.Repo { Commit = Commit, PrivateToken = privateToken, GatedToken = gatedToken });
        repo.Files["config.json"] = File.ReadAllBytes(Path.Combine(TinyLlama, "config.json"));
        repo.Files["tokenizer.json"] = Encoding.UTF8.GetBytes("""{"version": "1.0"}""");
        repo.Files["model-00001-of-00002.safetensors"] = Bytes(300_000, 1);
        repo.Files["model-00002-of-00002.safetensors"] = Bytes(200_000, 2);
        repo.Files["model.safetensors.index.json"] = Encoding.UTF8.GetBytes("""
            {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}
            """);
        repo.Files["special_tokens_map.json"] = [];
        repo.Files["pytorch_model.bin"] = Bytes(1000, 3);
        repo.Files["README.md"] = Encoding.UTF8.GetBytes("# card");
        return repo;
    }

    static HubClient Client(FakeHub hub, string cacheRoot, string? token = null, bool offline = false) =>
        new(new HfCache(cacheRoot, offline), hub.Endpoint, token) { FirstRetryDelay = TimeSpan.FromMilliseconds(5), MaxAttempts = 3 };

    static AxolotlConfig Config(string baseModel, params string[] datasets) => new()
    {
        BaseModel = baseModel,
        Datasets = datasets.Select(d => new DatasetConfig { Path = d }).ToList(),
    };

    static string Blob(string cache, string repoFolder, byte[] bytes) => Path.Combine(cache, repoFolder, "blobs", FakeHub.Sha256(bytes));

    [Fact]
    public void A_model_lands_in_huggingface_hubs_layout_with_only_the_files_a_run_needs()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        var repo = ShardedModel(hub);
        using var client = Client(hub, dir.Path, token: "hf_secret");
        var progress = new List<HubProgress>();
        client.Progress = progress.Add;

        var config = Config("org/tiny");
        var notes = PathResolver.Resolve(config, client);

        var repoFolder = Path.Combine(dir.Path, "models--org--tiny");
        var snapshot = Path.Combine(repoFolder, "snapshots", Commit);
        Assert.Equal(snapshot, config.BaseModel);
        Assert.Contains($"base_model: org/tiny → {snapshot} (downloaded from {hub.Endpoint})", notes);
        Assert.Equal(Commit, File.ReadAllText(Path.Combine(repoFolder, "refs", "main")));
        Assert.Equal(
            ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json"],
            Directory.GetFiles(snapshot).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (var name in Directory.GetFiles(snapshot).Select(Path.GetFileName))
        {
            var bytes = repo.Files[name!];
            // LFS files are named by sha256, the others by their git blob id, as huggingface_hub names them.
            var etag = repo.IsLfs(name!) ? FakeHub.Sha256(bytes) : FakeHub.GitSha1(bytes);
            Assert.Equal($"../../blobs/{etag}", new FileInfo(Path.Combine(snapshot, name!)).LinkTarget);
            Assert.Equal(bytes, File.ReadAllBytes(Path.Combine(snapshot, name!)));
        }
        Assert.Empty(Directory.GetFiles(Path.Combine(repoFolder, "blobs"), "*.incomplete"));
        Assert.Equal(64, global::Axolotl.Models.DecoderConfig.FromFolder(snapshot).HiddenSize);

        var requests = hub.Requests.ToList();
        Assert.DoesNotContain(requests, r => r.Path.Contains("pytorch_model.bin") || r.Path.Contains("README.md"));
        Assert.Contains(requests, r => r.Method == "GET" && r.Path == $"/api/models/org/tiny/revision/main");
        Assert.All(requests.Where(r => !r.Cdn), r => Assert.Equal("Bearer hf_secret", r.Header("Authorization")));
        Assert.All(requests.Where(r => r.Cdn), r => Assert.Null(r.Header("Authorization")));
        Assert.Equal(2, requests.Count(r => r.Cdn && r.Method == "GET"));
        Assert.Contains(requests, r => r.Method == "HEAD" && r.Path == $"/org/tiny/resolve/{Commit}/model-00001-of-00002.safetensors");
        var last = progress.Last(p => p.File == "model-00001-of-00002.safetensors");
        Assert.Equal((300_000L, (long?)300_000), (last.Done, last.Total));

        // The second run finds everything in the cache and asks nothing.
        int before = hub.Requests.Count;
        config = Config("org/tiny");
        PathResolver.Resolve(config, client);
        Assert.Equal(snapshot, config.BaseModel);
        Assert.Equal(before, hub.Requests.Count);
    }

    [Fact]
    public void A_cache_laid_out_by_huggingface_hub_is_used_without_a_request()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        File.WriteAllText(dir["train.jsonl"], "{\"text\": \"a\"}\n");
        var model = HubCacheTests.AddSnapshot(dir.Path, "models--org--tiny", Commit, [("config.json", Path.Combine(TinyLlama, "config.json")), ("model.safetensors", Path.Combine(TinyLlama, "model.safetensors"))]);
        var data = HubCacheTests.AddSnapshot(dir.Path, "datasets--org--rows", Commit, [("train.jsonl", dir["train.jsonl"])]);
        var config = Config("org/tiny", "org/rows");
        using var client = Client(hub, dir.Path);
        PathResolver.Resolve(config, client);
        Assert.Equal(model, config.BaseModel);
        Assert.Equal(data, config.Datasets[0].Path);
        Assert.Empty(hub.Requests);
    }

    [Fact]
    public void A_snapshot_that_lacks_the_weights_is_completed_without_fetching_what_it_has()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        var repo = ShardedModel(hub);
        // What `hf_hub_download("org/tiny", "config.json")` leaves behind.
        File.WriteAllBytes(dir["config.json"], repo.Files["config.json"]);
        var snapshot = HubCacheTests.AddSnapshot(dir.Path, "models--org--tiny", Commit, [("config.json", dir["config.json"])]);
        var config = Config("org/tiny");
        using var client = Client(hub, dir.Path);
        PathResolver.Resolve(config, client);
        Assert.Equal(snapshot, config.BaseModel);
        Assert.True(File.Exists(Path.Combine(snapshot, "model-00002-of-00002.safetensors")));
        Assert.DoesNotContain(hub.Requests, r => r.Path.EndsWith("/config.json"));
    }

    [Fact]
    public void A_dataset_id_fetches_its_train_data_files_from_the_datasets_routes()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        var repo = hub.Add("dataset:org/rows", new FakeHub.Repo { Commit = Commit });
        repo.Files["data/train-00000-of-00001.jsonl"] = Encoding.UTF8.GetBytes("{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
        repo.Files["data/test-00000-of-00001.jsonl"] = Encoding.UTF8.GetBytes("{\"text\": \"held out\"}\n");
        repo.Files["README.md"] = Encoding.UTF8.GetBytes("# card");
        repo.Files[".gitattributes"] = Encoding.UTF8.GetBytes("*.bin lfs");
        var config = Config(TinyLlama, "org/rows");
        config.Datasets[0].Revision = Commit;
        using var client = Client(hub, dir.Path);
        PathResolver.Resolve(config, client);
        Assert.Equal(Path.Combine(dir.Path, "datasets--org--rows", "snapshots", Commit), config.Datasets[0].Path);
        Assert.Equal(["one", "two"], RowReader.Read(config.Datasets[0].Path, null).Select(r => (string)r.Fields["text"]!));
        Assert.Contains(hub.Requests, r => r.Path == $"/api/datasets/org/rows/revision/{Commit}");
        Assert.Equal([$"/datasets/org/rows/resolve/{Commit}/data/train-00000-of-00001.jsonl"], hub.Requests.Where(r => r.Method == "HEAD").Select(r => r.Path));
        // A commit asked for directly needs no ref.
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "datasets--org--rows", "refs")));
    }

    [Fact]
    public void A_connection_dropped_mid_body_is_resumed_with_a_range_request()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        var repo = ShardedModel(hub);
        var shard = repo.Files["model-00001-of-00002.safetensors"];
        int drops = 0;
        hub.Fault = r => r.Cdn && r.Header("Range") == null && r.Path.EndsWith(FakeHub.Sha256(shard)) && Interlocked.Increment(ref drops) == 1
            ? new FakeHub.Response(200, [], shard) { DropAfter = 120_000 }
            : null;
        using var client = Client(hub, dir.Path);
        var snapshot = client.Download("org/tiny", "model", null, HubWant.Model);
        Assert.Equal(shard, File.ReadAllBytes(Path.Combine(snapshot, "model-00001-of-00002.safetensors")));
        Assert.Equal(FakeHub.Sha256(shard), FakeHub.Sha256(File.ReadAllBytes(Blob(dir.Path, "models--org--tiny", shard))));
        var cdn = hub.Requests.Where(r => r.Cdn && r.Path.EndsWith(FakeHub.Sha256(shard))).ToList();
        Assert.Equal([null, "bytes=120000-"], cdn.Select(r => r.Header("Range")));
    }

    [Fact]
    public void A_partial_left_by_an_earlier_run_is_resumed_and_a_corrupt_one_is_fetched_again()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        var repo = ShardedModel(hub);
        byte[] good = repo.Files["model-00001-of-00002.safetensors"], bad = repo.Files["model-00002-of-00002.safetensors"];
        Directory.CreateDirectory(Path.Combine(dir.Path, "models--org--tiny", "blobs"));
        File.WriteAllBytes(Blob(dir.Path, "models--org--tiny", good) + ".incomplete", good[..50_000]);
        File.WriteAllBytes(Blob(dir.Path, "models--org--tiny", bad) + ".incomplete", Bytes(70_000, 99));
        using var client = Client(hub, dir.Path);
        var snapshot = client.Download("org/tiny", "model", null, HubWant.Model);

        Assert.Equal(good, File.ReadAllBytes(Path.Combine(snapshot, "model-00001-of-00002.safetensors")));
        Assert.Equal(bad, File.ReadAllBytes(Path.Combine(snapshot, "model-00002-of-00002.safetensors")));
        Assert.Equal(["bytes=50000-"], hub.Requests.Where(r => r.Cdn && r.Path.EndsWith(FakeHub.Sha256(good))).Select(r => r.Header("Range")));
        // The corrupt partial was completed, failed its sha256, and was fetched again from the start.
        Assert.Equal(["bytes=70000-", null], hub.Requests.Where(r => r.Cdn && r.Path.EndsWith(FakeHub.Sha256(bad))).Select(r => r.Header("Range")));
        Assert.Empty(Directory.GetFiles(Path.Combine(dir.Path, "models--org--tiny", "blobs"), "*.incomplete"));
    }

    [Fact]
    public void A_blob_that_never_arrives_whole_is_never_linked_into_the_snapshot()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        var repo = ShardedModel(hub);
        var shard = repo.Files["model-00002-of-00002.safetensors"];
        hub.Fault = r => r.Cdn && r.Path.EndsWith(FakeHub.Sha256(shard)) ? new FakeHub.Response(200, [], Bytes(shard.Length, 7)) : null;
        using var client = Client(hub, dir.Path);
        var e = Assert.Throws<UserError>(() => client.Download("org/tiny", "model", null, HubWant.Model));
        Assert.Contains("after 3 tries", e.Message);
        Assert.Contains("sha256", e.Message);
        var repoFolder = Path.Combine(dir.Path, "models--org--tiny");
        Assert.False(File.Exists(Blob(dir.Path, "models--org--tiny", shard)));
        Assert.False(Path.Exists(Path.Combine(repoFolder, "snapshots", Commit, "model-00002-of-00002.safetensors")));
        Assert.False(File.Exists(Path.Combine(repoFolder, "refs", "main")));
    }

    [Fact]
    public void Server_errors_are_retried_and_a_renamed_repo_is_followed()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        ShardedModel(hub, "org/new-name");
        hub.Renamed["org/old-name"] = "org/new-name";
        int failures = 0;
        hub.Fault = r => r.Method == "HEAD" && Interlocked.Increment(ref failures) <= 2 ? FakeHub.Response.Error(503) : null;
        using var client = Client(hub, dir.Path);
        var snapshot = client.Download("org/old-name", "model", null, HubWant.Config);
        Assert.Equal(Path.Combine(dir.Path, "models--org--old-name", "snapshots", Commit), snapshot);
        Assert.True(File.Exists(Path.Combine(snapshot, "config.json")));
        Assert.Equal(3, hub.Requests.Count(r => r.Method == "HEAD" && r.Path.StartsWith("/org/old-name/resolve/") && r.Path.EndsWith("/config.json")));
        Assert.Contains(hub.Requests, r => r.Method == "HEAD" && r.Path == $"/org/new-name/resolve/{Commit}/config.json");

        hub.Fault = r => FakeHub.Response.Error(500);
        var e = Assert.Throws<UserError>(() => client.Download("org/new-name", "model", null, HubWant.Config));
        Assert.Contains("HTTP 500", e.Message);
        Assert.Contains("HF_HUB_OFFLINE", e.Message);
    }

    [Fact]
    public void Refusals_are_sentences_that_say_what_to_do()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        ShardedModel(hub, "org/private", privateToken: "hf_owner");
        ShardedModel(hub, "org/gated", gatedToken: "hf_granted");
        using var anonymous = Client(hub, dir.Path);
        using var withToken = Client(hub, dir.Path, token: "hf_other");

        var e = Assert.Throws<UserError>(() => anonymous.Download("org/private", "model", null, HubWant.Model));
        Assert.Contains("401", e.Message);
        Assert.Contains("HF_TOKEN", e.Message);
        Assert.Contains("huggingface-cli login", e.Message);
        e = Assert.Throws<UserError>(() => withToken.Download("org/gated", "model", null, HubWant.Model));
        Assert.Contains("gated", e.Message);
        Assert.Contains($"{hub.Endpoint}/org/gated", e.Message);
        Assert.Contains("token from HF_TOKEN", e.Message);
        e = Assert.Throws<UserError>(() => withToken.Download("org/absent", "model", null, HubWant.Model));
        Assert.Contains("org/absent was not found", e.Message);
        e = Assert.Throws<UserError>(() => withToken.Download("org/gated", "model", "v9", HubWant.Model));
        Assert.Contains("no revision 'v9'", e.Message);
        e = Assert.Throws<UserError>(() => anonymous.DownloadFile("org/private", "model", Commit, "config.json"));
        Assert.Contains("401", e.Message);
        using var owner = Client(hub, dir.Path, token: "hf_owner");
        e = Assert.Throws<UserError>(() => owner.DownloadFile("org/private", "model", Commit, "nope.json"));
        Assert.Contains("no file 'nope.json'", e.Message);
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "models--org--gated", "refs")));

        var bin = hub.Add("model:org/bin-only", new FakeHub.Repo { Commit = Commit });
        bin.Files["config.json"] = Encoding.UTF8.GetBytes("{}");
        bin.Files["pytorch_model.bin"] = Bytes(10, 1);
        e = Assert.Throws<UserError>(() => anonymous.Download("org/bin-only", "model", null, HubWant.Model));
        Assert.Contains("pytorch_model.bin", e.Message);
        Assert.Contains("safetensors", e.Message);
    }

    [Fact]
    public void Offline_nothing_is_requested_and_the_message_says_why()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        ShardedModel(hub);
        using var client = Client(hub, dir.Path, offline: true);
        var e = Assert.Throws<UserError>(() => PathResolver.Resolve(Config("org/tiny"), client));
        Assert.Contains("base_model 'org/tiny'", e.Message);
        Assert.Contains($"models--org--tiny in the Hugging Face cache at {dir.Path}", e.Message);
        Assert.Contains("HF_HUB_OFFLINE", e.Message);
        e = Assert.Throws<UserError>(() => PathResolver.Resolve(Config("./no/such/model"), client));
        Assert.Contains("that path does not exist", e.Message);
        Assert.Empty(hub.Requests);
    }

    [Fact]
    public void Endpoint_and_token_come_from_huggingface_hubs_variables()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        ShardedModel(hub, privateToken: "hf_from_file");
        File.WriteAllText(dir["token"], "hf_from_file\n");
        var env = new Dictionary<string, string> { ["HF_HOME"] = dir.Path, ["HF_ENDPOINT"] = hub.Endpoint + "/" };
        using (var client = HubClient.FromEnvironment(env.GetValueOrDefault))
        {
            Assert.Equal(hub.Endpoint, client.Endpoint);
            Assert.Equal(Path.Combine(dir.Path, "hub"), client.Cache.Root);
            client.Download("org/tiny", "model", null, HubWant.Config);
        }
        Assert.Equal("Bearer hf_from_file", hub.Requests.First().Header("Authorization"));

        env["HF_TOKEN"] = "hf_variable";
        using (var client = HubClient.FromEnvironment(env.GetValueOrDefault))
        {
            var e = Assert.Throws<UserError>(() => client.ListFiles("org/tiny", "model", "main"));
            Assert.Contains("token from HF_TOKEN", e.Message);
        }
        Assert.Equal("Bearer hf_variable", hub.Requests.Last().Header("Authorization"));
        Assert.Equal(HubClient.DefaultEndpoint, HubClient.FromEnvironment(_ => null).Endpoint);
    }

    [Fact]
    public void Each_use_of_an_id_picks_its_own_files_from_the_listing()
    {
        string[] listing = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "model.safetensors",
            "pytorch_model.bin", "adapter_config.json", "adapter_model.safetensors", "README.md", "onnx/model.onnx"];
        List<string> Pick(HubWant want, params string[] files) => HubFiles.Select(want, "org/x", files, _ => throw new InvalidOperationException());
        Assert.Equal(["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "model.safetensors"], Pick(HubWant.Model, listing));
        Assert.Equal(["config.json", "generation_config.json"], Pick(HubWant.Config, listing));
        Assert.Equal(["tokenizer.json", "tokenizer.model"], Pick(HubWant.Tokenizer, listing));
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors"], Pick(HubWant.Adapter, listing));
        Assert.Equal(["config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "adapter_config.json", "adapter_model.safetensors", "model.safetensors"],
            Pick(HubWant.Everything, listing));
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors"], Pick(HubWant.Everything, "adapter_config.json", "adapter_model.safetensors", "README.md"));
        Assert.Equal(["data/train.jsonl"], Pick(HubWant.Dataset, "data/train.jsonl", "data/validation.jsonl", "README.md", ".gitattributes"));
        Assert.Contains("has none of the files", Assert.Throws<UserError>(() => Pick(HubWant.Dataset, "README.md")).Message);
        Assert.Contains("tokenizer_config needs", Assert.Throws<UserError>(() => Pick(HubWant.Tokenizer, "config.json")).Message);
    }

    [Fact]
    public void Include_globs_match_as_fnmatch()
    {
        var match = HubFiles.Globs(["*.json", "data/"]);
        Assert.True(match("config.json"));
        Assert.True(match("sub/x.json"));
        Assert.True(match("data/train.parquet"));
        Assert.False(match("model.safetensors"));
    }

    [Fact]
    public async Task The_download_and_fetch_commands()
    {
        using var dir = TestSetup.TempDir();
        using var hub = new FakeHub();
        ShardedModel(hub);
        var (code, stdout, stderr) = await Run(dir, hub, "download", "org/tiny", "--include", "*.json");
        Assert.True(code == 0, stderr + stdout);
        var snapshot = Path.Combine(dir["hub"], "models--org--tiny", "snapshots", Commit);
        Assert.Equal(snapshot, stdout.Trim().Split('\n')[^1]);
        Assert.Equal(["config.json", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json"], Directory.GetFiles(snapshot).Select(Path.GetFileName).Order(StringComparer.Ordinal));

        (code, _, stderr) = await Run(dir, hub, "download", "org/absent", "--repo-type", "dataset");
        Assert.Equal(2, code);
        Assert.Contains("dataset org/absent", stderr);

        (code, stdout, stderr) = await Run(dir, hub, "fetch", "examples", "--dest", dir["ex"]);
        Assert.True(code == 0, stderr + stdout);
        Assert.True(File.Exists(Path.Combine(dir["ex"], "quickstart.yml")));
        Assert.True(File.Exists(Path.Combine(dir["ex"], "models", "tiny-llama-text", "model.safetensors")));
    }

    static async Task<(int Code, string Stdout, string Stderr)> Run(TempDir dir, FakeHub hub, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "axolotl.dll"));
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["HF_HUB_CACHE"] = dir["hub"];
        start.Environment["HF_ENDPOINT"] = hub.Endpoint;
        start.Environment["HF_HOME"] = dir["hf-home"];
        start.Environment.Remove("HF_TOKEN");
        start.Environment.Remove("HF_HUB_OFFLINE");
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, await stdout, stderr);
    }
}
