using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Export;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Export;

/// <summary>Tiny models of each family, paired with a tokenizer, as HF folders; and GGUF exports of them.</summary>
static class GgufFixtures
{
    sealed class Quiet : IRecipeReporter;
    public static readonly IRecipeReporter Reporter = new Quiet();

    /// <summary>The repository's quickstart model (examples/models/tiny-llama-text), Llama-2 tokenizer included.</summary>
    public static string Quickstart => Path.Combine(LlamaCpp.RepoRoot, "examples", "models", "tiny-llama-text");

    /// <summary>
    /// An HF folder for <paramref name="family"/>: the reference models (tiny-llama, tiny-qwen2-randbias, mistral,
    /// gemma, phi) or, for families without one (qwen3, gemma2, phi3), tiny-llama's shape under that model_type with
    /// seeded random weights of a larger spread (so greedy choices are not near-ties). All get the 512-token
    /// byte-level BPE tokenizer (tok-tiny512).
    /// </summary>
    public static string Folder(TempDir dir, string family)
    {
        var folder = Path.Combine(dir.Path, family);
        Directory.CreateDirectory(folder);
        foreach (var f in Directory.GetFiles(TestSetup.Data("tok-tiny512"))) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
        string? source = family switch
        {
            "tiny-llama" or "tiny-qwen2-randbias" => TestSetup.Data("reference", "models", family),
            "mistral" or "gemma" or "phi" => TestSetup.Data("reference", "families", family, "model"),
            _ => null,
        };
        if (source is not null)
        {
            foreach (var f in Directory.GetFiles(source)) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
            // llama.cpp runs Mistral as a Llama, without the sliding window: keep the window beyond the test's context.
            if (family == "mistral") Edit(folder, c => c["sliding_window"] = 4096);
            return folder;
        }
        var config = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "models", "tiny-llama", "config.json")))!.AsObject();
        config["model_type"] = family;
        config["initializer_range"] = 0.2;
        switch (family)
        {
            case "qwen3": config["head_dim"] = 16; break;
            case "gemma2":
                config["head_dim"] = 16;
                config["query_pre_attn_scalar"] = 16;
                config["sliding_window"] = 4096;
                config["hidden_activation"] = "gelu_pytorch_tanh";
                config.Remove("tie_word_embeddings"); // Gemma 2 ties its head
                break;
            case "phi3": config["hidden_act"] = "silu"; break;
        }
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());
        var model = CausalLM.Create(DecoderConfig.FromFolder(folder), ScalarType.Float32, ScalarType.Float32);
        model.InitializeWeights(7);
        using (no_grad())
        using (var generator = new TorchSharp.torch.Generator(11))
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains("norm")) p.add_(rand(p.shape, generator: generator) * 0.5 - 0.25);
        model.SavePretrained(folder);
        return folder;
    }

    static void Edit(string folder, Action<JsonObject> edit)
    {
        var path = Path.Combine(folder, "config.json");
        var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(config);
        File.WriteAllText(path, config.ToJsonString());
    }

    public static (CausalLM Model, Tokenizer Tokenizer) Load(string folder) =>
        (CausalLM.FromPretrained(folder, ScalarType.Float32, ScalarType.Float32), Tokenizer.FromFolder(folder));

    /// <summary>Exports <paramref name="folder"/>'s model as <paramref name="type"/> into <paramref name="dir"/>; returns the file.</summary>
    public static string Export(TempDir dir, string folder, GgufOutType type)
    {
        var (model, tokenizer) = Load(folder);
        var path = Path.Combine(dir.Path, $"{Path.GetFileName(folder)}-{type}.gguf");
        GgufExport.Write(model, folder, tokenizer, type, path, Reporter);
        return path;
    }

    /// <summary>Greedy generation as <c>axolotl inference --temperature 0</c> runs it (fp32), stopping at the tokenizer's EOS.</summary>
    public static List<int> Greedy(CausalLM model, Tokenizer tokenizer, IReadOnlyList<int> prompt, int tokens) =>
        GreedyWithMargins(model, tokenizer, prompt, tokens).Tokens;

    /// <summary>As <see cref="Greedy"/>, with each step's gap between the best and second-best logit.</summary>
    public static (List<int> Tokens, List<float> Margins) GreedyWithMargins(CausalLM model, Tokenizer tokenizer, IReadOnlyList<int> prompt, int tokens)
    {
        var margins = new List<float>();
        var generated = Generation.Generate(model, prompt, new GenerationOptions
        {
            MaxNewTokens = tokens,
            EosTokenIds = tokenizer.EosTokenId is int eos ? [eos] : [],
        }, onLogits: logits =>
        {
            var top = logits.reshape(-1).topk(2).values;
            margins.Add(top[0].item<float>() - top[1].item<float>());
        });
        return (generated, margins);
    }

    /// <summary>
    /// How many leading tokens two implementations must agree on: all, unless a step's best two logits are within
    /// <paramref name="tie"/> of each other (there fp32 summation order alone may pick either), then up to and
    /// including that step.
    /// </summary>
    public static int Decisive(List<float> margins, float tie = 1e-4f)
    {
        int i = margins.FindIndex(m => m < tie);
        return i < 0 ? margins.Count : i;
    }
}

/// <summary>tools/llama-cpp-check: llama.cpp (node-llama-cpp's prebuilt build) run on a GGUF file.</summary>
static class LlamaCpp
{
    public static string RepoRoot { get; } = FindRepoRoot();

    static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Axolotl.sln"))) return dir.FullName;
        throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }

    static string Tool => Path.Combine(RepoRoot, "tools", "llama-cpp-check");

    /// <summary>Why llama.cpp cannot be run here, or null when it can.</summary>
    public static string? Missing { get; } = FindMissing();

    static string? FindMissing()
    {
        if (!Directory.Exists(Path.Combine(Tool, "node_modules", "node-llama-cpp")))
            return "llama.cpp check skipped: tools/llama-cpp-check/node_modules is missing (run `npm ci` there; .ci/run does).";
        try
        {
            using var node = Process.Start(new ProcessStartInfo("node", "--version") { RedirectStandardOutput = true, UseShellExecute = false })!;
            node.WaitForExit();
            return node.ExitCode == 0 ? null : "llama.cpp check skipped: `node --version` failed.";
        }
        catch (System.ComponentModel.Win32Exception) { return "llama.cpp check skipped: node is not installed (apt-get install nodejs npm)."; }
    }

    /// <summary>One llama.cpp job: greedy tokens after the prompt (ids, or text llama.cpp tokenizes), and optionally a perplexity.</summary>
    public static JsonObject Job(string gguf, IReadOnlyList<int>? tokens, int n, IReadOnlyList<int>? score = null, string? text = null)
    {
        var job = new JsonObject { ["model"] = gguf, ["n"] = n };
        if (tokens is not null) job["tokens"] = new JsonArray(tokens.Select(t => (JsonNode)t).ToArray());
        if (text is not null) job["prompt"] = text;
        if (score is not null) job["score"] = new JsonArray(score.Select(t => (JsonNode)t).ToArray());
        return job;
    }

    /// <summary>Runs the jobs in one node process (llama.cpp's backend loads once); the results in order.</summary>
    public static List<JsonObject> Run(IEnumerable<JsonObject> jobs)
    {
        var file = Path.Combine(Path.GetTempPath(), $"llama-cpp-jobs-{Guid.NewGuid():N}.json");
        File.WriteAllText(file, new JsonArray(jobs.Select(j => (JsonNode)j).ToArray()).ToJsonString());
        try
        {
            var info = new ProcessStartInfo("node") { WorkingDirectory = Tool, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var a in new[] { "check.mjs", "--jobs", file }) info.ArgumentList.Add(a);
            using var process = Process.Start(info)!;
            var stderr = process.StandardError.ReadToEndAsync();
            var stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            Assert.True(process.ExitCode == 0, $"llama.cpp check failed ({process.ExitCode}): {stderr.Result}");
            return JsonNode.Parse(stdout.Trim().Split('\n')[^1])!.AsArray().Select(r => r!.AsObject()).ToList();
        }
        finally { File.Delete(file); }
    }

    public static List<int> Ints(JsonNode? array) => array!.AsArray().Select(x => x!.GetValue<int>()).ToList();
}

public sealed class LlamaCppFactAttribute : FactAttribute
{
    public LlamaCppFactAttribute() { if (LlamaCpp.Missing is { } reason) Skip = reason; }
}

public sealed class LlamaCppTheoryAttribute : TheoryAttribute
{
    public LlamaCppTheoryAttribute() { if (LlamaCpp.Missing is { } reason) Skip = reason; }
}
