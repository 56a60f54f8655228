using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

public class InterruptTests
{
    [Fact]
    [Trait("Category", "Slow")]
    public async Task Sigterm_saves_a_checkpoint_and_the_run_resumes_to_the_end()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            datasets:
              - path: {TestSetup.WriteReferenceRows(dir, i => 16 + 4 * i)}
            sequence_len: 64
            micro_batch_size: 1
            num_epochs: 100
            learning_rate: 0.0001
            logging_steps: 1
            bf16: false
            save_steps: 100000
            auto_resume_from_checkpoints: true
            output_dir: {dir["out"]}
            """);
        using var process = Process.Start(TrainProcess(dir["c.yml"]))!;
        var stderr = process.StandardError.ReadToEndAsync();
        // Wait until training is under way, then ask it to stop as a scheduler would.
        while (await process.StandardOutput.ReadLineAsync() is { } line && !line.StartsWith("step 20/")) { }
        using (var kill = Process.Start("kill", ["-TERM", process.Id.ToString()])) await kill!.WaitForExitAsync();
        var rest = process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        await rest;

        Assert.Equal(130, process.ExitCode);
        var message = await stderr;
        Assert.Contains("interrupted after step", message);
        var checkpoint = Assert.Single(Directory.GetDirectories(dir["out"], "checkpoint-*"));
        int stoppedAt = int.Parse(Path.GetFileName(checkpoint)["checkpoint-".Length..]);
        Assert.InRange(stoppedAt, 20, 399);

        // The resumed run in its own process too: what it prints is then part of a failure's message.
        using var resumed = Process.Start(TrainProcess(dir["c.yml"]))!;
        var resumedErr = resumed.StandardError.ReadToEndAsync();
        var resumedOut = resumed.StandardOutput.ReadToEndAsync();
        await resumed.WaitForExitAsync();
        Assert.True(resumed.ExitCode == 0, $"the resumed run exited with {resumed.ExitCode}: {await resumedErr}\n{await resumedOut}\n"
            + string.Join("\n", Directory.GetFiles(dir["out"], "axolotl-crash-*").Select(File.ReadAllText)));
        var history = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray();
        Assert.Equal(Enumerable.Range(1, 400), history.Where(e => e!["loss"] != null).Select(e => (int)e!["step"]!));
    }

    static ProcessStartInfo TrainProcess(string config)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "axolotl.dll"), "train", config }) start.ArgumentList.Add(a);
        return start;
    }

    [Fact]
    public void A_nan_loss_stops_training_before_the_update_with_a_clear_message()
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        using (no_grad()) ((RmsNorm)model.model.norm).weight[0] = float.NaN;
        var before = model.model.embed_tokens.weight.clone();
        var examples = new[] { new Example([1, 5, 9, 200, 17], [1, 5, 9, 200, 17]) };
        var e = Assert.Throws<UserError>(() => new Trainer(model, new TrainingOptions { LearningRate = 1e-3 }).Train(examples));
        Assert.Contains("the loss became NaN at step 1", e.Message);
        Assert.True(model.model.embed_tokens.weight.eq(before).all().item<bool>());
    }
}
