using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

public class PackingTrainerTests
{
    static CausalLM Model() =>
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);

    static List<Example> Examples(int count, int seed, int minLength, int maxLength)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            var ids = Enumerable.Range(0, random.Next(minLength, maxLength + 1)).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids.Select((id, i) => i < 3 ? Example.IgnoreIndex : id).ToArray());
        })];
    }

    sealed class PlanObserver : ITrainingObserver
    {
        public TrainingPlan? Plan;
        public void OnStart(TrainingPlan plan) => Plan = plan;
    }

    [Fact]
    public void Steps_follow_the_packed_batches_as_axolotl_counts_them()
    {
        using var scope = NewDisposeScope();
        // Worked out by hand, whatever the shuffle: first-fit-decreasing into bins of 64 places each 40-token example
        // alone in a bin (two need 80) and then each 20-token one beside a 40 (24 tokens of room): 30 bins of 60 tokens,
        // efficiency 60/64. Two bins per micro-batch: 15 micro-batches an epoch (no incomplete one to drop), where
        // unpacked rows would need 30. calculate_total_num_steps: floor(num_epochs * (15 // gradient_accumulation_steps))
        // = floor(2 * 5) = 10 optimizer steps.
        var random = new Random(3);
        var examples = Enumerable.Range(0, 60).Select(i =>
        {
            var ids = Enumerable.Range(0, i % 2 == 0 ? 40 : 20).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        }).ToList();
        var options = new TrainingOptions
        {
            MicroBatchSize = 2, GradientAccumulationSteps = 3, NumEpochs = 2, LearningRate = 1e-3, LrScheduler = "constant",
            LoggingSteps = 1, Seed = 42, Packing = new PackingOptions { SequenceLen = 64, MicroBatchSize = 2 },
        };
        var observer = new PlanObserver();
        var state = new Trainer(Model(), options, observer).Train(examples);
        var plan = observer.Plan!;
        Assert.Equal(15, plan.BatchesPerEpoch);
        Assert.Equal(10, plan.TotalSteps);
        Assert.Equal(10, state.GlobalStep);
        Assert.Equal(60.0 / 64, plan.PackingEfficiency!.Value, 1e-9);
    }

    [Fact]
    public void Packed_evaluation_gives_the_unpacked_loss_of_the_same_batch_and_refuses_a_split_too_small()
    {
        using var scope = NewDisposeScope();
        var train = Examples(8, 5, 10, 30);
        var eval = Examples(4, 6, 20, 30); // any two share a bin of 64, no three need more than two
        double EvalLoss(TrainingOptions o) => (double)new Trainer(Model(), o).Train(train, eval: eval).LogHistory.First(e => e["eval_loss"] != null)["eval_loss"]!;
        var baseOptions = new TrainingOptions { MicroBatchSize = 2, MaxSteps = 1, LearningRate = 1e-3, LrScheduler = "constant", EvalSteps = 1 };
        // Two bins of 64 hold the four examples: one packed batch, the same tokens as one unpacked batch of four.
        Assert.Equal(2, Packing.Pack(eval, [0, 1, 2, 3], new PackingOptions { SequenceLen = 64 }).Batches.Count);
        var packed = EvalLoss(baseOptions with { EvalPacking = new PackingOptions { SequenceLen = 64, MicroBatchSize = 2 } });
        var unpacked = EvalLoss(baseOptions with { EvalBatchSize = 4 });
        Assert.True(Math.Abs(packed - unpacked) < 1e-5, $"{packed} vs {unpacked}");

        var e = Assert.Throws<UserError>(() => new Trainer(Model(), baseOptions with { EvalPacking = new PackingOptions { SequenceLen = 256, MicroBatchSize = 2 } })
            .Train(train, eval: eval));
        Assert.Contains("eval_sample_packing: false", e.Message);
    }

    [Fact]
    public void Pad_to_sequence_len_pads_unpacked_batches_without_changing_the_losses()
    {
        double[] Losses(int? multiple)
        {
            using var scope = NewDisposeScope();
            var options = new TrainingOptions
            {
                MicroBatchSize = 2, NumEpochs = 2, LearningRate = 1e-3, LrScheduler = "constant", LoggingSteps = 1, PadToMultipleOf = multiple,
            };
            return new Trainer(Model(), options).Train(Examples(4, 9, 10, 40)).LogHistory.Where(e => e["loss"] != null).Select(e => (double)e["loss"]!).ToArray();
        }
        var longest = Losses(null);
        var padded = Losses(PackingOptions.PadMultiple(100));
        Assert.Equal(4, longest.Length);
        for (int i = 0; i < longest.Length; i++) Assert.True(Math.Abs(longest[i] - padded[i]) < 1e-5, $"step {i + 1}: {longest[i]} vs {padded[i]}");
    }
}
