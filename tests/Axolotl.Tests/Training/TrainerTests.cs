using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

public class TrainerTests
{
    static CausalLM Model() =>
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);

    /// <summary>Four rows of different lengths with partly masked labels, so normalisation and padding matter.</summary>
    static List<Example> Examples()
    {
        var random = new Random(7);
        return [.. new[] { 40, 64, 23, 51 }.Select(length =>
        {
            var ids = Enumerable.Range(0, length).Select(_ => random.Next(3, 512)).ToArray();
            var labels = ids.Select((id, i) => i < length / 3 ? Example.IgnoreIndex : id).ToArray();
            return new Example(ids, labels);
        })];
    }

    static double[] Losses(int microBatch, int accumulation)
    {
        using var scope = NewDisposeScope();
        var model = Model();
        var options = new TrainingOptions
        {
            MicroBatchSize = microBatch, GradientAccumulationSteps = accumulation, NumEpochs = 3, LearningRate = 1e-3,
            LrScheduler = "constant", MaxGradNorm = 0, LoggingSteps = 1, PadTokenId = 0,
        };
        var state = new Trainer(model, options).Train(Examples());
        return state.LogHistory.Where(e => e["loss"] != null).Select(e => (double)e["loss"]!).ToArray();
    }

    [Fact]
    public void Accumulating_two_micro_batches_of_two_equals_one_batch_of_four()
    {
        // The loss is normalised by the trainable tokens of the whole window, so splitting a batch changes nothing.
        var whole = Losses(4, 1);
        var split = Losses(2, 2);
        Assert.Equal(3, whole.Length);
        Assert.Equal(whole.Length, split.Length);
        for (int i = 0; i < whole.Length; i++) Assert.True(Math.Abs(whole[i] - split[i]) < 2e-6, $"step {i + 1}: {whole[i]} vs {split[i]}");
        Assert.True(whole[2] < whole[0]);
    }

    [Fact]
    public void Loss_ignores_padding_and_masked_labels()
    {
        using var scope = NewDisposeScope();
        var model = Model();
        using var _ = no_grad();
        var ids = tensor(new long[] { 1, 5, 9, 200, 17, 3, 88, 400 }).unsqueeze(0);
        var (sum, tokens) = model.LossSum(ids, ids);
        var padded = cat([ids, zeros(1, 5, dtype: ScalarType.Int64)], 1);
        var labels = cat([ids, full(1, 5, -100L)], 1);
        var (paddedSum, paddedTokens) = model.LossSum(padded, labels);
        Assert.Equal(tokens, paddedTokens);
        Assert.True(Math.Abs(sum.item<float>() - paddedSum.item<float>()) < 1e-5);
    }

    [Fact]
    public void Log_history_has_hf_fields_and_the_final_summary()
    {
        using var scope = NewDisposeScope();
        var model = Model();
        var options = new TrainingOptions { MicroBatchSize = 2, NumEpochs = 2, LearningRate = 1e-3, LrScheduler = "linear", WarmupSteps = 1, LoggingSteps = 2 };
        var state = new Trainer(model, options).Train(Examples());
        Assert.Equal(4, state.GlobalStep);
        var logs = state.LogHistory.Where(e => e["loss"] != null).ToList();
        Assert.Equal([2, 4], logs.Select(e => (int)e["step"]!));
        foreach (var key in new[] { "loss", "grad_norm", "learning_rate", "epoch", "step", "tokens_per_second" })
            Assert.All(logs, e => Assert.NotNull(e[key]));
        // Logged lr is the value after the step: linear, warmup 1, total 4 → after step 2: (4 - 2) / 3.
        Assert.Equal(1e-3 * 2 / 3, (double)logs[0]["learning_rate"]!, 12);
        Assert.Equal(2.0, (double)logs[1]["epoch"]!, 6);
        Assert.NotNull(state.LogHistory[^1]["train_runtime"]);
    }

    sealed class LiveTensorProbe : ITrainingObserver
    {
        public List<long> LiveAfterStep { get; } = [];
        public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) =>
            LiveAfterStep.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Training_steps_leak_no_tensors(bool lora)
    {
        using var scope = NewDisposeScope();
        var model = Model();
        if (lora) Axolotl.Adapters.Lora.Apply(model, new Axolotl.Adapters.LoraSettings { Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["q_proj", "v_proj"] });
        var probe = new LiveTensorProbe();
        var options = new TrainingOptions { MicroBatchSize = 1, GradientAccumulationSteps = 2, NumEpochs = 4, LearningRate = 1e-3, MaxGradNorm = 1.0 };
        new Trainer(model, options, probe).Train(Examples());
        Assert.Equal(8, probe.LiveAfterStep.Count);
        // After the first step (optimizer state created), every step must leave exactly as many live tensors as it found.
        Assert.All(probe.LiveAfterStep.Skip(2), n => Assert.Equal(probe.LiveAfterStep[1], n));
    }
}
