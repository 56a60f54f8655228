using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

public class EvaluationTests
{
    static string WriteData(TempDir dir) => TestSetup.WriteReferenceRows(dir, i => 30 + 8 * i);

    [Fact]
    public void Eval_loss_is_the_mean_loss_of_the_held_out_rows_under_the_trained_model()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            datasets:
              - path: {WriteData(dir)}
            sequence_len: 64
            val_set_size: 2
            eval_steps: 3
            micro_batch_size: 1
            num_epochs: 3
            learning_rate: 0.001
            logging_steps: 1
            bf16: false
            save_strategy: "no"
            output_dir: {dir["out"]}
            """);
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));

        var history = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray();
        var evals = history.Where(e => e!["eval_loss"] != null).ToList();
        Assert.Equal([3, 6], evals.Select(e => (int)e!["step"]!));
        Assert.Equal(6, history.Count(e => e!["loss"] != null)); // 2 training rows x 3 epochs

        // Recompute: the same split, scored row by row with the saved final model.
        var config = ConfigLoader.Load(dir["c.yml"]);
        var held = DatasetBuilder.Build(config, () => throw new InvalidOperationException("pre-tokenized")).Eval;
        Assert.Equal(2, held.Count);
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(dir["out"], ScalarType.Float32, ScalarType.Float32);
        using var _ = no_grad();
        double mean = held.Average(e =>
        {
            var ids = tensor(e.InputIds.Select(i => (long)i).ToArray()).unsqueeze(0);
            var (sum, tokens) = model.LossSum(ids, ids);
            return sum.item<float>() / tokens;
        });
        double logged = (double)evals[^1]!["eval_loss"]!;
        Assert.True(Math.Abs(mean - logged) < 1e-5, $"eval_loss {logged} vs recomputed {mean}");
        Assert.Equal(Math.Exp(logged), (double)evals[^1]!["eval_perplexity"]!, 9);
    }

    [Theory]
    [InlineData(0.25, 1)]   // ceil(0.25 x 4)
    [InlineData(0.3, 2)]    // ceil(1.2)
    [InlineData(3.0, 3)]    // a row count
    public void Validation_split_sizes_follow_train_test_split(double valSetSize, int expected)
    {
        using var dir = TestSetup.TempDir();
        var config = new AxolotlConfig { BaseModel = "m", LearningRate = 1e-3, SequenceLen = 64, ValSetSize = valSetSize, Datasets = [new DatasetConfig { Path = WriteData(dir) }] };
        var prepared = DatasetBuilder.Build(config, () => throw new InvalidOperationException());
        Assert.Equal(expected, prepared.Eval.Count);
        Assert.Equal(4 - expected, prepared.Examples.Count);
        var all = prepared.Examples.Concat(prepared.Eval).Select(e => e.InputIds.Length).Order();
        Assert.Equal(new[] { 30, 38, 46, 54 }, all);
    }

    [Fact]
    public void A_split_that_leaves_nothing_to_train_is_refused()
    {
        using var dir = TestSetup.TempDir();
        var config = new AxolotlConfig { BaseModel = "m", LearningRate = 1e-3, ValSetSize = 4, Datasets = [new DatasetConfig { Path = WriteData(dir) }] };
        Assert.Contains("leaving none to train on", Assert.Throws<UserError>(() => DatasetBuilder.Build(config, () => throw new InvalidOperationException())).Message);
    }
}

public class LoadBestModelTests
{
    [Fact]
    public void Load_best_model_at_end_saves_the_best_checkpoints_weights_and_rotation_keeps_it()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            datasets:
              - path: {TestSetup.WriteReferenceRows(dir, i => 30 + 8 * i)}
            sequence_len: 64
            val_set_size: 1
            adapter: lora
            lora_r: 4
            lora_alpha: 8
            lora_target_modules: [q_proj, v_proj]
            micro_batch_size: 1
            num_epochs: 4
            learning_rate: 0.05
            lr_scheduler: constant
            logging_steps: 1
            eval_steps: 1
            save_steps: 1
            save_total_limit: 1
            load_best_model_at_end: true
            bf16: false
            output_dir: {dir["out"]}
            """);
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));
        var state = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!;
        var evals = state["log_history"]!.AsArray().Where(e => e!["eval_loss"] != null).ToList();
        var best = evals.MinBy(e => (double)e!["eval_loss"]!)!;
        int bestStep = (int)best["step"]!, lastStep = (int)evals[^1]!["step"]!;
        var bestDir = Path.Combine(dir["out"], $"checkpoint-{bestStep}");
        Assert.Equal(bestDir, (string)state["best_model_checkpoint"]!);
        Assert.Equal((double)best["eval_loss"]!, (double)state["best_metric"]!);
        // save_total_limit 1 keeps the newest and, when it is another, the best.
        Assert.Equal(new[] { bestStep, lastStep }.Distinct().Select(s => $"checkpoint-{s}").Order(),
            Directory.GetDirectories(dir["out"], "checkpoint-*").Select(Path.GetFileName).Order());
        Assert.Equal(File.ReadAllBytes(Path.Combine(bestDir, "adapter_model.safetensors")), File.ReadAllBytes(dir["out/adapter_model.safetensors"]));
        Assert.NotEqual(lastStep, bestStep); // this learning rate overshoots: the last evaluation is not the best
    }

    [Theory]
    [InlineData("early_stopping_patience: 2\neval_steps: 2\nsave_steps: 3", "save_steps a multiple of eval_steps")]
    [InlineData("early_stopping_patience: 2", "needs save_steps and eval_steps")]
    [InlineData("load_best_model_at_end: true\nval_set_size: 0", "load_best_model_at_end needs evaluations")]
    [InlineData("load_best_model_at_end: true\nval_set_size: 2\nmetric_for_best_model: accuracy", "metric_for_best_model 'accuracy' is not a metric")]
    public void Inconsistent_best_model_settings_are_user_errors(string extra, string expected)
    {
        var yaml = "base_model: m\ndatasets:\n  - path: d.jsonl\nlearning_rate: 0.001\n" + extra + "\n";
        var e = Assert.ThrowsAny<UserError>(() => ConfigLoader.Parse(yaml, "cfg.yml"));
        Assert.Contains(expected, e.Message);
    }
}

public class EvaluateCommandTests
{
    static string Config(TempDir dir, bool packed = false) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        datasets:
          - path: {TestSetup.WriteReferenceRows(dir, i => 30 + 8 * i)}
        sequence_len: 64
        sample_packing: {(packed ? "true" : "false")}
        val_set_size: 2
        adapter: lora
        lora_r: 4
        lora_alpha: 8
        lora_target_modules: [q_proj, v_proj]
        micro_batch_size: 1
        num_epochs: 2
        learning_rate: 0.01
        logging_steps: 1
        eval_steps: 4
        bf16: false
        save_strategy: "no"
        output_dir: {dir["out"]}
        """;

    /// <summary>Packed (eval_sample_packing follows sample_packing) as the trainer evaluated, or row by row.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Evaluate_scores_the_trained_adapter_and_writes_axolotls_eval_summary(bool packed)
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config(dir, packed));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));
        Assert.Equal(0, Cli.Cli.Run(["evaluate", dir["c.yml"]]));

        var lines = File.ReadAllText(dir["out/eval_summary.csv"]).Split("\r\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("metric,training,validation", lines[0]);
        Assert.Equal(["loss", "runtime", "samples_per_second", "steps_per_second"], lines.Skip(1).Select(l => l.Split(',')[0]));
        var loss = lines[1].Split(',');
        // The validation loss of the saved adapter is the one the trainer logged after its last step (same weights, same rows).
        var logged = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray().Last(e => e!["eval_loss"] != null)!;
        Assert.Equal(4, (int)logged["step"]!);
        Assert.True(Math.Abs((double)logged["eval_loss"]! - double.Parse(loss[2], System.Globalization.CultureInfo.InvariantCulture)) < 1e-6, $"{loss[2]} vs {logged["eval_loss"]}");
        Assert.True(double.Parse(loss[1], System.Globalization.CultureInfo.InvariantCulture) is > 0 and < 20);
    }

    [Fact]
    public void Evaluate_without_an_adapter_to_load_says_where_it_looked()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config(dir));
        var (code, _, stderr) = BadInputTests.RunCli("evaluate", dir["c.yml"]);
        Assert.Equal(2, code);
        Assert.Contains("evaluate: no LoRA adapter in", stderr);
        Assert.Contains("set lora_model_dir", stderr);
    }
}
