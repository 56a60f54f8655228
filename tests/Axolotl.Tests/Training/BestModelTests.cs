using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>transformers' EarlyStoppingCallback and best-checkpoint bookkeeping.</summary>
public class BestModelTests
{
    static Trainer Judge(int? patience, bool greaterIsBetter = false) =>
        new(null!, new TrainingOptions { EarlyStoppingPatience = patience, MetricForBestModel = "eval_loss", GreaterIsBetter = greaterIsBetter });

    static List<(bool NewBest, bool Stop)> Feed(Trainer trainer, params double[] losses) =>
        losses.Select(l => trainer.JudgeEvaluation(new JsonObject { ["eval_loss"] = l })).ToList();

    [Fact]
    public void Patience_counts_evaluations_in_a_row_without_a_strictly_better_metric()
    {
        var trainer = Judge(patience: 2);
        var verdicts = Feed(trainer, 3.0, 2.0, 2.5, 1.9, 1.9, 2.1);
        Assert.Equal([true, true, false, true, false, false], verdicts.Select(v => v.NewBest));
        // 2.5 is one miss, 1.9 resets, an equal 1.9 is not better (threshold 0), 2.1 is the second miss in a row.
        Assert.Equal([false, false, false, false, false, true], verdicts.Select(v => v.Stop));
        Assert.Equal(1.9, trainer.State.BestMetric);
        Assert.Equal(2, trainer.State.EarlyStoppingPatienceCounter);
    }

    [Fact]
    public void Greater_is_better_flips_the_comparison_and_no_patience_never_stops()
    {
        var trainer = Judge(patience: null, greaterIsBetter: true);
        var verdicts = Feed(trainer, 1.0, 0.5, 0.4, 0.3, 2.0);
        Assert.Equal([true, false, false, false, true], verdicts.Select(v => v.NewBest));
        Assert.All(verdicts, v => Assert.False(v.Stop));
        Assert.Equal(2.0, trainer.State.BestMetric);
    }

    static List<Example> Examples(int count, int seed)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            var ids = Enumerable.Range(0, 24).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        })];
    }

    [Fact]
    public void A_run_whose_metric_stops_improving_stops_after_patience_evaluations_and_keeps_the_counter_in_its_checkpoints()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        // learning rate 0: every evaluation equals the first, so none is better and the counter only grows.
        var options = new TrainingOptions
        {
            LearningRate = 0, LrScheduler = "constant", NumEpochs = 3, LoggingSteps = 1, EvalSteps = 1,
            EarlyStoppingPatience = 2, MetricForBestModel = "eval_loss",
        };
        var checkpoints = new CheckpointOptions(dir.Path, d => model.SavePretrained(d)) { SaveSteps = 1 };
        var state = new Trainer(model, options, null, checkpoints).Train(Examples(4, 1), eval: Examples(2, 2));
        Assert.Equal(3, state.GlobalStep); // evaluations at 1 (best), 2 (miss 1), 3 (miss 2: stop) of 12 planned steps
        Assert.Equal(3, state.LogHistory.Count(e => e["eval_loss"] != null));
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-1"), state.BestModelCheckpoint);
        var saved = JsonFiles.ReadObject(Path.Combine(dir.Path, "checkpoint-3", TrainerState.FileName));
        Assert.Equal(2, (int)saved["stateful_callbacks"]!["EarlyStoppingCallback"]!["attributes"]!["early_stopping_patience_counter"]!);
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-1"), (string)saved["best_model_checkpoint"]!);
        Assert.Equal(state.BestMetric, (double)saved["best_metric"]!);
    }
}
