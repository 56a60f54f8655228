using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>
/// SIGKILL at chosen points of a real CLI run, at steps its log reports and inside checkpoint writes, then auto-resume: the run
/// must end on the adapter of a run never stopped, bit for bit, having logged the same losses step for step.
/// </summary>
public class KillResumeTests
{
    const int SaveDelayMs = 150;

    static string Config(TempDir dir, string outputDir) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        datasets:
          - path: {TestSetup.WriteReferenceRows(dir, i => 24 + 8 * i)}
        sequence_len: 64
        adapter: lora
        lora_r: 4
        lora_alpha: 8
        lora_dropout: 0.1
        lora_target_modules: [q_proj, v_proj]
        micro_batch_size: 1
        gradient_accumulation_steps: 1
        num_epochs: 6
        learning_rate: 0.002
        lr_scheduler: cosine
        warmup_steps: 2
        logging_steps: 1
        bf16: false
        save_steps: 3
        save_total_limit: 2
        auto_resume_from_checkpoints: true
        output_dir: {outputDir}
        """;

    static Process Launch(string config)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "axolotl.dll"), "train", config }) start.ArgumentList.Add(a);
        start.Environment["AXOLOTL_TEST_SAVE_DELAY_MS"] = SaveDelayMs.ToString();
        return Process.Start(start)!;
    }

    static async Task<int> RunToEnd(string config)
    {
        using var process = Launch(config);
        var stderr = process.StandardError.ReadToEndAsync();
        await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, await stderr);
        return process.ExitCode;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    static extern int SendSignal(int pid, int signal);

    const int SIGKILL = 9, SIGCONT = 18, SIGSTOP = 19;

    /// <summary>
    /// Starts the run and SIGKILLs it, either on reading the log line of the step <paramref name="stepsPast"/> past the
    /// first one it runs, or while it writes a checkpoint. For the latter the test watches the output folder (inotify)
    /// for the checkpoint's temporary folder, freezes the run (SIGSTOP) and kills it only if that folder still exists,
    /// so the kill provably lands inside the save; when the save ended first the run goes on (SIGCONT) to the next one.
    /// Returns false when the run finished first.
    /// </summary>
    static async Task<bool> RunAndKill(string config, string outputDir, bool duringSave, int stepsPast, List<string> trace)
    {
        Directory.CreateDirectory(outputDir);
        using var watcher = new FileSystemWatcher(outputDir, ".checkpoint-*.tmp") { NotifyFilter = NotifyFilters.DirectoryName };
        using var process = Launch(config);
        var stderr = process.StandardError.ReadToEndAsync();
        int? firstStep = null;
        bool killed = false;
        object gate = new();
        if (duringSave)
        {
            watcher.Created += (_, e) =>
            {
                lock (gate)
                {
                    if (killed || SendSignal(process.Id, SIGSTOP) != 0) return;
                    if (Directory.Exists(e.FullPath))
                    {
                        killed = true;
                        SendSignal(process.Id, SIGKILL);
                        trace.Add($"killed while writing {e.Name}");
                    }
                    else
                    {
                        trace.Add($"{e.Name} was complete before the run stopped");
                        SendSignal(process.Id, SIGCONT);
                    }
                }
            };
            watcher.EnableRaisingEvents = true;
        }
        while (await process.StandardOutput.ReadLineAsync() is { } line)
        {
            if (duringSave || !line.StartsWith("step ")) continue;
            int step = int.Parse(line[5..line.IndexOf('/')]);
            firstStep ??= step;
            lock (gate)
                if (step >= firstStep + stepsPast && !killed)
                {
                    killed = true;
                    process.Kill();
                    trace.Add($"killed after seeing step {step}");
                }
        }
        await process.WaitForExitAsync();
        watcher.EnableRaisingEvents = false;
        bool wasKilled;
        lock (gate) wasKilled = killed;
        if (!wasKilled || process.ExitCode == 0)
        {
            Assert.True(process.ExitCode == 0, await stderr);
            return false;
        }
        return true;
    }

    static List<string> StepLog(string outputDir) =>
        [.. JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null)
            .Select(e => $"{e!["step"]} {(double)e["loss"]!:R} {(double)e["grad_norm"]!:R} {(double)e["learning_rate"]!:R} {(double)e["epoch"]!:R}")];

    /// <remarks>Six CLI launches of a 24-step run: about a minute on an idle 2-core machine.</remarks>
    [Fact]
    [Trait("Category", "Slow")]
    public async Task Killed_runs_resume_to_the_uninterrupted_adapter_and_loss_log()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["ref.yml"], Config(dir, dir["ref"]));
        File.WriteAllText(dir["killed.yml"], Config(dir, dir["killed"]));
        await RunToEnd(dir["ref.yml"]);

        var trace = new List<string>();
        int killsAfterSteps = 0, killsDuringSave = 0;
        // Alternate: kill a few steps into the run (at steps the log reports), then while it writes a checkpoint. On a
        // loaded machine a kill can land late (the file watcher reports a save late, e.g. the last one), and the run
        // then ends before a later attempt's kill point: each kind of kill must have happened at least once.
        int[] stepsPast = [2, 0, 3, 0];
        for (int attempt = 0; attempt < stepsPast.Length; attempt++)
        {
            bool duringSave = attempt % 2 == 1;
            if (!await RunAndKill(dir["killed.yml"], dir["killed"], duringSave, stepsPast[attempt], trace)) break;
            if (duringSave) killsDuringSave++; else killsAfterSteps++;
        }
        await RunToEnd(dir["killed.yml"]);
        var why = string.Join("; ", trace);
        Assert.True(killsAfterSteps >= 1 && killsDuringSave >= 1, why);
        Assert.Equal(StepLog(dir["ref"]), StepLog(dir["killed"]));
        Assert.Equal(File.ReadAllBytes(dir["ref/adapter_model.safetensors"]), File.ReadAllBytes(dir["killed/adapter_model.safetensors"]));
        Assert.Equal(Directory.GetDirectories(dir["ref"], "checkpoint-*").Select(Path.GetFileName).Order(),
                     Directory.GetDirectories(dir["killed"], "checkpoint-*").Select(Path.GetFileName).Order());
        Assert.Empty(Directory.GetDirectories(dir["killed"], ".*"));
    }
}

/// <summary>A save that fails midway (a full disk) ends the run with a message and leaves the previous checkpoint usable.</summary>
public class FailedSaveTests
{
    static List<Example> Examples()
    {
        var random = new Random(5);
        return [.. Enumerable.Range(0, 4).Select(_ =>
        {
            var ids = Enumerable.Range(0, 20).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        })];
    }

    [Fact]
    public void A_save_that_fails_midway_keeps_the_previous_checkpoint_usable()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        var options = new TrainingOptions { LearningRate = 1e-3, NumEpochs = 2, LoggingSteps = 1 };
        int saves = 0;
        var failing = new CheckpointOptions(dir.Path, d =>
        {
            model.SavePretrained(d);
            if (++saves == 2) throw new IOException("No space left on device");
        }) { SaveSteps = 2 };
        var e = Assert.Throws<UserError>(() => new Trainer(model, options, null, failing).Train(Examples()));
        Assert.StartsWith("saving checkpoint-4 failed (No space left on device); the previous checkpoint", e.Message);
        Assert.Contains("checkpoint-2 is intact", e.Message);
        Assert.Equal(["checkpoint-2"], Directory.GetDirectories(dir.Path).Select(Path.GetFileName));

        // The surviving checkpoint resumes to the end.
        var resumed = CausalLM.FromPretrained(Path.Combine(dir.Path, "checkpoint-2"), ScalarType.Float32, ScalarType.Float32);
        var working = new CheckpointOptions(dir.Path, d => resumed.SavePretrained(d)) { SaveSteps = 2 };
        var state = new Trainer(resumed, options, null, working).Train(Examples(), Path.Combine(dir.Path, "checkpoint-2"));
        Assert.Equal(8, state.GlobalStep);
        Assert.Equal(Enumerable.Range(1, 8), state.LogHistory.Where(x => x["loss"] != null).Select(x => (int)x["step"]!));
    }
}
