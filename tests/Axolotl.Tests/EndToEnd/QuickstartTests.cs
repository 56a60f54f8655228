using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Models;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>The README's quickstart, run as a user runs it: from the repository root, through the real CLI.</summary>
public class QuickstartTests
{
    static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Axolotl.sln"))) return dir.FullName;
        throw new InvalidOperationException("repository root (Axolotl.sln) not found above " + AppContext.BaseDirectory);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public async Task Quickstart_trains_a_lora_with_clearly_falling_loss()
    {
        using var dir = TestSetup.TempDir();
        var start = new ProcessStartInfo("dotnet") { WorkingDirectory = RepoRoot(), RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "axolotl.dll"), "train", "examples/quickstart.yml", "--output-dir", dir["out"] })
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, $"exit {process.ExitCode}: {stderr}\n{await stdout}");

        var losses = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();
        Assert.True(losses.Length >= 5, $"only {losses.Length} log entries");
        Assert.True(losses[^3..].Average() < 0.85 * losses[0], $"loss did not fall clearly: {string.Join(", ", losses)}");
        foreach (var file in new[] { "adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json" })
            Assert.True(File.Exists(Path.Combine(dir["out"], file)), $"{file} missing");
    }

    [Fact]
    public void Shipped_model_is_pretrained_not_random()
    {
        // Held-out English (not in its training text): a random model scores ln(32000) ≈ 10.4 nats per token.
        var modelDir = Path.Combine(RepoRoot(), "examples", "models", "tiny-llama-text");
        var tokenizer = Tokenizer.FromFolder(modelDir);
        var text = "Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, " +
                   "if you don't tell me that this means war, if you still try to defend the infamies and horrors " +
                   "perpetrated by that Antichrist, I really believe he is Antichrist, I will have nothing more to do with you.";
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(modelDir, ScalarType.Float32, ScalarType.Float32);
        var ids = tensor(tokenizer.Encode(text).Select(i => (long)i).ToArray()).unsqueeze(0);
        using var _ = no_grad();
        var (sum, tokens) = model.LossSum(ids, ids);
        double loss = sum.item<float>() / tokens;
        Assert.True(loss < 6.5, $"held-out loss {loss:F3}");
    }
}
