using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>
/// The loop knows nothing of what it optimises: an objective's loss and metrics are normalised by its own units, logged
/// as it names them, and evaluated with an eval_ prefix; callbacks see the hooks in order and can stop the run.
/// </summary>
public class ObjectiveSeamTests
{
    static CausalLM Model() =>
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);

    static List<Example> Examples(int count, int seed = 3)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(i =>
        {
            var ids = Enumerable.Range(0, 10 + 3 * i).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        })];
    }

    /// <summary>
    /// Cross-entropy per row (one unit a row), reporting the rows' count as a metric "rows" (so rows/units = 1 whatever
    /// the window) and the summed first-token id as "first_id" (so its logged value is checkable by hand).
    /// </summary>
    sealed class PerRowObjective(CausalLM model) : ITrainingObjective
    {
        public int ForwardBackwardCalls;
        public List<double> Scales { get; } = [];
        public long Units(Batch batch) => batch.Rows;

        public ObjectiveOutput ForwardBackward(Batch batch, double scale)
        {
            ForwardBackwardCalls++;
            Scales.Add(scale);
            var loss = RowLosses(batch).sum();
            (loss * scale).backward();
            return Output(batch, loss.item<float>());
        }

        public ObjectiveOutput Forward(Batch batch) => Output(batch, RowLosses(batch).sum().item<float>());

        static ObjectiveOutput Output(Batch batch, double loss) => new(loss, new Dictionary<string, double>
        {
            ["rows"] = batch.Rows,
            ["first_id"] = Enumerable.Range(0, batch.Rows).Sum(r => (double)batch.InputIds[r * batch.Length]),
        });

        Tensor RowLosses(Batch batch)
        {
            var (ids, labels, _, _) = BatchTensors.Of(batch, model.Device);
            var rows = new List<Tensor>();
            for (int r = 0; r < batch.Rows; r++)
            {
                var (sum, tokens) = model.LossSum(ids[r].unsqueeze(0), labels[r].unsqueeze(0));
                rows.Add(sum / tokens);
            }
            return stack(rows);
        }
    }

    sealed class Recorder : ITrainerCallback
    {
        public List<string> Calls { get; } = [];
        public int StopAt { get; init; } = int.MaxValue;
        public void OnTrainBegin(TrainerContext c) => Calls.Add("begin");
        public void OnAfterBackward(TrainerContext c) => Calls.Add($"backward {c.Step + 1}");
        public void OnStepEnd(TrainerContext c)
        {
            Calls.Add($"end {c.Step}");
            if (c.Step == StopAt) c.Control.StopReason = "recorder asked to stop";
        }
        public void OnLog(TrainerContext c, JsonObject entry) => Calls.Add(entry["loss"] != null ? $"log {c.Step}" : $"eval-log {c.Step}");
        public void OnEvaluate(TrainerContext c, JsonObject metrics) => Calls.Add($"evaluate {c.Step}");
        public void OnTrainEnd(TrainerContext c) => Calls.Add("end");
    }

    [Fact]
    public void An_objective_s_units_metrics_and_eval_prefix_reach_the_log()
    {
        using var scope = NewDisposeScope();
        var model = Model();
        var objective = new PerRowObjective(model);
        var options = new TrainingOptions
        {
            MicroBatchSize = 2, GradientAccumulationSteps = 2, MaxSteps = 2, LearningRate = 1e-3, LrScheduler = "constant",
            LoggingSteps = 2, CurriculumSampling = true, EvalSteps = 2,
        };
        var train = Examples(8);
        var eval = Examples(3, seed: 9);
        var recorder = new Recorder();
        var trainer = new Trainer(model, options) { Objective = objective };
        trainer.Callbacks.Add(recorder);
        var state = trainer.Train(train, eval: eval);

        // Each micro-batch's gradient is scaled by 1 / the window's units: 4 rows over two micro-batches of 2.
        Assert.Equal(4, objective.ForwardBackwardCalls);
        Assert.All(objective.Scales, s => Assert.Equal(0.25, s));
        var log = state.LogHistory.Single(e => e["loss"] != null);
        // rows / units is 1 in every window; first_id is the mean first token of the window's rows (curriculum order),
        // averaged over the two logged steps.
        Assert.Equal(1.0, (double)log["rows"]!, 12);
        double expectedFirst = (train.Take(4).Average(e => (double)e.InputIds[0]) + train.Skip(4).Take(4).Average(e => (double)e.InputIds[0])) / 2;
        Assert.Equal(expectedFirst, (double)log["first_id"]!, 9);
        // The metric's key sits between the optimizer figures and epoch, as TRL logs its rewards.
        var keys = log.Select(kv => kv.Key).ToList();
        Assert.True(keys.IndexOf("learning_rate") < keys.IndexOf("rows") && keys.IndexOf("rows") < keys.IndexOf("epoch"), string.Join(",", keys));

        var evaluation = state.LogHistory.Single(e => e["eval_loss"] != null);
        Assert.Equal(1.0, (double)evaluation["eval_rows"]!, 12);
        // Per-batch means weighted by rows: eval batches of 2 and 1 rows → the mean first id over all three rows.
        Assert.Equal(eval.Average(e => (double)e.InputIds[0]), (double)evaluation["eval_first_id"]!, 9);

        Assert.Equal(["begin", "backward 1", "end 1", "backward 2", "end 2", "log 2", "eval-log 2", "evaluate 2", "end"], recorder.Calls);
    }

    [Fact]
    public void A_callback_can_stop_the_run_after_its_step()
    {
        using var scope = NewDisposeScope();
        var model = Model();
        var options = new TrainingOptions { MicroBatchSize = 1, MaxSteps = 5, LearningRate = 1e-3, LoggingSteps = 1 };
        var recorder = new Recorder { StopAt = 2 };
        var notices = new List<string>();
        var trainer = new Trainer(model, options, new NoticeObserver(notices));
        trainer.Callbacks.Add(recorder);
        var state = trainer.Train(Examples(6));
        Assert.Equal(2, state.GlobalStep);
        // The step that asked to stop is still logged, as transformers logs before it honours should_training_stop.
        Assert.Equal([1, 2], state.LogHistory.Where(e => e["loss"] != null).Select(e => (int)e["step"]!));
        Assert.Equal(["recorder asked to stop"], notices);
    }

    sealed class NoticeObserver(List<string> notices) : ITrainingObserver
    {
        public void OnNotice(string message) => notices.Add(message);
    }
}
