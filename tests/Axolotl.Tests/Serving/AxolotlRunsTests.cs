using Axolotl.Config;
using Microsoft.Extensions.AI;

namespace Axolotl.Tests.Serving;

/// <summary>The library façade: configs from files or objects, runs with IProgress and CancellationToken, as the CLI runs them.</summary>
[Collection(GlobalTorchRng.Name)]
public class AxolotlRunsTests
{
    static string Config(TempDir dir, string extra = "") => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        datasets:
          - path: {TestSetup.WriteReferenceRows(dir, i => 30 + 8 * i)}
        sequence_len: 64
        adapter: lora
        lora_r: 4
        lora_alpha: 8
        lora_target_modules: [q_proj, v_proj]
        micro_batch_size: 1
        max_steps: 4
        learning_rate: 0.001
        logging_steps: 1
        bf16: false
        save_steps: 100
        output_dir: {dir["out"]}
        {extra}
        """;

    /// <summary>Reports on the run's own thread, in order (Progress&lt;T&gt; would post them to the thread pool).</summary>
    sealed class Recorder(Action<TrainingProgress>? then = null) : IProgress<TrainingProgress>
    {
        public List<TrainingProgress> Reports { get; } = [];
        public void Report(TrainingProgress value)
        {
            lock (Reports) Reports.Add(value);
            then?.Invoke(value);
        }
    }

    [Fact]
    public async Task Train_reports_each_step_and_cancelling_saves_a_checkpoint_after_the_step_in_flight()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config(dir));
        using var stop = new CancellationTokenSource();
        var progress = new Recorder(p => { if (p.Kind == TrainingProgressKind.Step && p.Step == 2) stop.Cancel(); });

        var e = await Assert.ThrowsAsync<RunCanceledException>(() => AxolotlRuns.TrainAsync(dir["c.yml"], progress, stop.Token));
        Assert.Equal(2, e.Step);
        Assert.Equal(stop.Token, e.CancellationToken);
        Assert.True(File.Exists(Path.Combine(e.Checkpoint!, "adapter_model.safetensors")), e.Checkpoint);
        Assert.Equal("checkpoint-2", Path.GetFileName(e.Checkpoint));
        Assert.Equal(4, progress.Reports.Single(r => r.Kind == TrainingProgressKind.Started).TotalSteps);
        Assert.Equal([1, 2], progress.Reports.Where(r => r.Kind == TrainingProgressKind.Step).Select(r => r.Step));
        Assert.All(progress.Reports.Where(r => r.Kind == TrainingProgressKind.Step), r => Assert.True(r.Loss > 0));
        var logged = progress.Reports.Where(r => r.Kind == TrainingProgressKind.Logged).ToList();
        Assert.Equal([1, 2], logged.Select(r => r.Step));
        Assert.Equal((double)logged[0].Log!["loss"]!, logged[0].Loss);

        // The same config picks up from the checkpoint and finishes; the adapter then answers through the IChatClient.
        var resumed = new Recorder();
        var result = await AxolotlRuns.TrainAsync(AxolotlRuns.LoadConfig(dir["c.yml"], "--auto-resume-from-checkpoints"), resumed);
        Assert.Equal([3, 4], resumed.Reports.Where(r => r.Kind == TrainingProgressKind.Step).Select(r => r.Step));
        Assert.Equal(4, result.State.GlobalStep);
        Assert.True(File.Exists(dir["out/adapter_model.safetensors"]));

        File.WriteAllText(dir["chat.yml"], Config(dir, $"tokenizer_config: {TestSetup.Data("tok-tiny512")}"));
        var merged = await AxolotlRuns.MergeLoraAsync(AxolotlRuns.LoadConfig(dir["chat.yml"]));
        Assert.True(File.Exists(Path.Combine(merged, "model.safetensors")));

        using var chat = await AxolotlRuns.LoadChatClientAsync(AxolotlRuns.LoadConfig(dir["chat.yml"]));
        Assert.Equal("out", chat.ModelId);
        var answer = await chat.GetResponseAsync("Say hi.", new ChatOptions { Temperature = 0, MaxOutputTokens = 4 });
        Assert.Equal(4, answer.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task A_cancelled_token_starts_nothing()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config(dir));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => AxolotlRuns.TrainAsync(dir["c.yml"], null, new CancellationToken(true)));
        Assert.False(Directory.Exists(dir["out"]));
    }

    [Fact]
    public void A_config_object_loads_as_the_same_yaml_would()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config(dir));
        var fromFile = AxolotlRuns.LoadConfig(dir["c.yml"]);
        var fromObject = AxolotlRuns.LoadConfig(new
        {
            base_model = TestSetup.Data("reference", "models", "tiny-llama"),
            datasets = new[] { new { path = fromFile.Datasets[0].Path } },
            sequence_len = 64, adapter = "lora", lora_r = 4, lora_alpha = 8, lora_target_modules = new[] { "q_proj", "v_proj" },
            micro_batch_size = 1, max_steps = 4, learning_rate = 0.001, logging_steps = 1, bf16 = false, save_steps = 100,
            output_dir = dir["out"],
        });
        Assert.Equal(ConfigWriter.ToYaml(fromFile).Split('\n').Skip(1), ConfigWriter.ToYaml(fromObject).Split('\n').Skip(1));

        var dictionary = AxolotlRuns.LoadConfig(new Dictionary<string, object> { ["base_model"] = "m", ["learning_rate"] = 0.1, ["datasets"] = new[] { new { path = "d.json", type = "alpaca" } } });
        Assert.Equal("alpaca", dictionary.Datasets[0].Strategy);
        var e = Assert.Throws<UserError>(() => AxolotlRuns.LoadConfig(new { base_model = "m", learning_rate = 0.1, datasets = new[] { new { path = "d" } }, lora_alhpa = 8 }));
        Assert.Contains("lora_alpha", e.Message);
    }
}
