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
        var examples = Examples(60, 3, 8, 40);
        var packing = new PackingOptions { SequenceLen = 64, MicroBatchSize = 2 };
        var options = new TrainingOptions
        {
            MicroBatchSize = 2, GradientAccumulationSteps = 3, NumEpochs = 2, LearningRate = 1e-3, LrScheduler = "constant",
            LoggingSteps = 1, Seed = 42, Packing = packing,
        };
        // The sampler's length: the fewest packed micro-batches among four shuffles (those of epochs 0-3, seed + epoch).
        var counts = Enumerable.Range(0, 4).Select(epoch =>
        {
            var order = Enumerable.Range(0, examples.Count).ToList();
            DatasetBuilder.Shuffle(order, 42 + epoch);
            return Packing.Pack(examples, order, packing).Batches.Count;
        }).ToList();
        int perEpoch = counts.Min();
        var observer = new PlanObserver();
        var state = new Trainer(Model(), options, observer).Train(examples);
        var plan = observer.Plan!;
        Assert.Equal(perEpoch, plan.BatchesPerEpoch);
        Assert.True(perEpoch < (examples.Count + 1) / 2); // packing needs fewer micro-batches than one example per row
        Assert.Equal((int)Math.Floor(2.0 * (perEpoch / 3)), plan.TotalSteps); // calculate_total_num_steps
        Assert.Equal(plan.TotalSteps, state.GlobalStep);
        Assert.InRange(plan.PackingEfficiency!.Value, 0.5, 1.0);
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
