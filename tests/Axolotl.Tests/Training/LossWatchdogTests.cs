using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>Axolotl's LossWatchDogCallback: at each step end, the last logged loss above the threshold counts a violation.</summary>
public class LossWatchdogTests
{
    static List<Example> Examples(int count)
    {
        var random = new Random(7);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            var ids = Enumerable.Range(0, 24).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        })];
    }

    static TrainerState Run(double? threshold, int patience)
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        var options = new TrainingOptions
        {
            LearningRate = 0, LrScheduler = "constant", NumEpochs = 1, LoggingSteps = 1, MicroBatchSize = 1,
            LossWatchdogThreshold = threshold, LossWatchdogPatience = patience,
        };
        return new Trainer(model, options).Train(Examples(8));
    }

    [Fact]
    public void A_loss_above_the_threshold_stops_the_run_after_patience_step_ends()
    {
        // Step 1 ends before anything is logged; steps 2 and 3 see a logged loss (> 0): the second violation stops it.
        var state = Run(threshold: 0.0, patience: 2);
        Assert.Equal(3, state.GlobalStep);
        Assert.Equal(3, state.LogHistory.Count(e => e["loss"] != null));
        // A threshold the tiny model's loss (~6.2) never reaches lets the run finish its 8 steps.
        Assert.Equal(8, Run(threshold: 100.0, patience: 2).GlobalStep);
    }

    [Fact]
    public void The_config_keys_load_with_Axolotls_default_patience()
    {
        var c = ConfigLoader.Parse("base_model: m\nlearning_rate: 0.0002\ndatasets:\n  - path: d.jsonl\n    type: alpaca\nloss_watchdog_threshold: 5.0\n", "cfg.yml");
        Assert.Equal(5.0, c.LossWatchdogThreshold);
        Assert.Null(c.LossWatchdogPatience);
    }
}

/// <summary>curriculum_sampling: Axolotl's SequentialSampler, the prepared order every epoch.</summary>
public class CurriculumSamplingTests
{
    static List<double> StepLosses(List<Example> examples, bool curriculum)
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        var options = new TrainingOptions
        {
            LearningRate = 0, LrScheduler = "constant", NumEpochs = 1, LoggingSteps = 1, MicroBatchSize = 1, CurriculumSampling = curriculum,
        };
        return new Trainer(model, options).Train(examples).LogHistory.Where(e => e["loss"] != null).Select(e => (double)e["loss"]!).ToList();
    }

    [Fact]
    public void With_curriculum_sampling_steps_follow_the_data_order()
    {
        var random = new Random(3);
        var examples = Enumerable.Range(0, 6).Select(i =>
        {
            var ids = Enumerable.Range(0, 10 + 3 * i).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        }).ToList();
        // Learning rate 0: each step's loss is its example's, so the log shows the order the examples were taken in.
        var forward = StepLosses(examples, curriculum: true);
        var backward = StepLosses(Enumerable.Reverse(examples).ToList(), curriculum: true);
        Assert.Equal(forward.AsEnumerable().Reverse().Select(l => Math.Round(l, 5)), backward.Select(l => Math.Round(l, 5)));
        Assert.NotEqual(forward.Select(l => Math.Round(l, 5)), StepLosses(examples, curriculum: false).Select(l => Math.Round(l, 5)));
    }
}
