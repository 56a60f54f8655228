using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>Recomputing each layer in backward must change nothing but memory: same loss, same gradients, same RNG stream.</summary>
[Collection(GlobalTorchRng.Name)]
public class GradientCheckpointTests
{
    static CausalLM Model(bool lora)
    {
        manual_seed(3);
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        // Dropout > 0 makes the recomputation depend on replaying the RNG state the first forward saw.
        if (lora) Lora.Apply(model, new LoraSettings { Rank = 4, Alpha = 8, Dropout = 0.2, TargetModules = ["q_proj", "v_proj", "down_proj"] });
        return model;
    }

    static List<Example> Examples()
    {
        var random = new Random(11);
        return [.. new[] { 33, 48, 20, 41 }.Select(length =>
        {
            var ids = Enumerable.Range(0, length).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids.Select((id, i) => i < 5 ? Example.IgnoreIndex : id).ToArray());
        })];
    }

    /// <summary>Loss of one batch of two rows and the gradient of every trainable weight, after the same seed.</summary>
    static (double Loss, Dictionary<string, float[]> Grads) LossAndGrads(bool lora, bool checkpointing)
    {
        using var scope = NewDisposeScope();
        var model = Model(lora);
        model.model.GradientCheckpointing = checkpointing;
        model.train();
        var rows = Examples().Take(2).ToList();
        int length = rows.Max(r => r.InputIds.Length);
        var ids = tensor(rows.SelectMany(r => r.InputIds.Select(i => (long)i).Concat(Enumerable.Repeat(0L, length - r.InputIds.Length))).ToArray(), [2, length]);
        var labels = tensor(rows.SelectMany(r => r.Labels.Select(i => (long)i).Concat(Enumerable.Repeat(-100L, length - r.Labels.Length))).ToArray(), [2, length]);
        manual_seed(5);
        var (sum, tokens) = model.LossSumBackward(ids, labels, 0.01);
        var grads = model.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad!.data<float>().ToArray());
        return (sum / tokens, grads);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Loss_and_gradients_equal_those_without_checkpointing(bool lora)
    {
        var (plainLoss, plain) = LossAndGrads(lora, checkpointing: false);
        var (loss, grads) = LossAndGrads(lora, checkpointing: true);
        Assert.Equal(plainLoss, loss, 1e-6);
        Assert.Equal(plain.Keys.Order(), grads.Keys.Order());
        // Every trainable weight got a gradient through the recomputation, including layer 0 under LoRA, whose input
        // (the frozen embedding) needs none.
        foreach (var (name, expected) in plain)
        {
            var actual = grads[name];
            if (!name.Contains("lora_A")) Assert.Contains(expected, v => v != 0); // lora_B starts at zero, so A gets none yet
            double worst = expected.Zip(actual, (a, b) => Math.Abs(a - b)).Max();
            Assert.True(worst < 1e-6, $"{name}: gradients differ by {worst}");
        }
    }

    sealed class Probe : ITrainingObserver
    {
        public List<long> LiveAfterStep { get; } = [];
        public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) =>
            LiveAfterStep.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    static (double[] Losses, List<long> Live) Train(bool checkpointing)
    {
        using var scope = NewDisposeScope();
        var model = Model(lora: true);
        model.model.GradientCheckpointing = checkpointing;
        var probe = new Probe();
        var options = new TrainingOptions { MicroBatchSize = 2, GradientAccumulationSteps = 1, NumEpochs = 3, LearningRate = 1e-3, LoggingSteps = 1 };
        manual_seed(9);
        var state = new Trainer(model, options, probe).Train(Examples());
        return (state.LogHistory.Where(e => e["loss"] != null).Select(e => (double)e["loss"]!).ToArray(), probe.LiveAfterStep);
    }

    [Fact]
    public void Training_with_checkpointing_logs_the_same_losses_and_leaks_no_tensors()
    {
        var (plain, _) = Train(checkpointing: false);
        var (losses, live) = Train(checkpointing: true);
        Assert.Equal(6, losses.Length);
        // Later steps match only if the recomputation left the RNG where the plain run has it (dropout masks of step 2+).
        for (int i = 0; i < plain.Length; i++) Assert.True(Math.Abs(plain[i] - losses[i]) < 1e-6, $"step {i + 1}: {plain[i]} vs {losses[i]}");
        Assert.All(live.Skip(2), n => Assert.Equal(live[1], n));
    }

    /// <summary>
    /// Native bytes allocated (glibc's in use + mmapped chunks) that a training forward leaves alive for backward: the
    /// saved activations. Median of three, as other tests allocate on other threads meanwhile.
    /// </summary>
    static long BytesKeptByForward(CausalLM model, Tensor ids)
    {
        var kept = new List<long>();
        for (int i = 0; i < 3; i++)
        {
            using var scope = NewDisposeScope();
            long before = Axolotl.Runtime.Hardware.HeapStats() is { } b ? b.InUse + b.Mapped : 0;
            var hidden = model.model.forward(ids);
            long after = Axolotl.Runtime.Hardware.HeapStats() is { } a ? a.InUse + a.Mapped : 0;
            kept.Add(after - before);
            hidden.sum().backward();
        }
        return kept.Order().ElementAt(1);
    }

    [Fact]
    public void Checkpointing_keeps_far_fewer_bytes_between_forward_and_backward()
    {
        if (Axolotl.Runtime.Hardware.HeapStats() is null)
        {
            Console.WriteLine("skipped: the C library has no mallinfo2 to count allocated bytes");
            return;
        }
        using var scope = NewDisposeScope();
        var arch = DecoderConfig.FromJson(System.Text.Json.Nodes.JsonNode.Parse("""
            {"model_type": "llama", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 6,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512}
            """)!.AsObject(), "test");
        manual_seed(4);
        var model = CausalLM.Create(arch, ScalarType.Float32, ScalarType.Float32);
        model.train();
        var ids = randint(3, 512, [2, 512]);
        long plain = BytesKeptByForward(model, ids);
        model.model.GradientCheckpointing = true;
        long checkpointed = BytesKeptByForward(model, ids);
        // Without: every layer's activations (tens of MB here). With: each layer's input, 2 × 512 × 64 fp32 = 256 KiB,
        // and the final norm's. Before each layer freed its intermediates, the step's dispose scope held them all either way.
        Assert.True(plain > 10 << 20, $"a plain forward kept only {plain >> 10} KiB");
        Assert.True(checkpointed * 5 < plain, $"checkpointed forward kept {checkpointed >> 10} KiB against {plain >> 10} KiB without");
    }

    [Fact]
    public void Evaluation_and_no_grad_forward_skip_the_recomputation()
    {
        using var scope = NewDisposeScope();
        var model = Model(lora: false);
        model.model.GradientCheckpointing = true;
        int layers = model.Config.NumLayers;
        var ids = tensor(Examples()[0].InputIds.Select(i => (long)i).ToArray()).unsqueeze(0);
        (int Forwards, int Recomputed) Count(Action run)
        {
            var (forwards, recomputed) = (GradientCheckpoint.CheckpointedForwards, GradientCheckpoint.Recomputations);
            run();
            return (GradientCheckpoint.CheckpointedForwards - forwards, GradientCheckpoint.Recomputations - recomputed);
        }
        // Training: every layer drops its activations in forward and runs again in backward.
        model.train();
        Tensor trained = null!;
        Assert.Equal((layers, 0), Count(() => trained = model.forward(ids)));
        Assert.True(trained.requires_grad);
        Assert.Equal((0, layers), Count(() => trained.sum().backward()));
        // Evaluation (grad on, eval mode) and a no_grad forward in train mode: plain layers, nothing to recompute.
        model.eval();
        Tensor evaluated = null!;
        Assert.Equal((0, 0), Count(() => evaluated = model.forward(ids)));
        Assert.Equal((0, 0), Count(() => evaluated.sum().backward()));
        model.train();
        using (no_grad())
        {
            Tensor plain = null!;
            Assert.Equal((0, 0), Count(() => plain = model.forward(ids)));
            Assert.False(plain.requires_grad);
            Assert.True(plain.allclose(trained.detach(), 0, 0));
        }
    }
}

public class GradientCheckpointConfigTests
{
    const string Minimal = "base_model: some/model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\nlearning_rate: 0.0002\n";

    [Fact]
    public void The_key_is_implemented_and_offload_is_read_as_true_with_a_warning()
    {
        var on = Axolotl.Config.ConfigLoader.Parse(Minimal + "gradient_checkpointing: True\n", "cfg.yml");
        Assert.Equal(Axolotl.Config.GradientCheckpointingMode.True, on.GradientCheckpointing);
        Assert.Empty(on.Warnings);
        var offload = Axolotl.Config.ConfigLoader.Parse(Minimal + "gradient_checkpointing: offload\n", "cfg.yml");
        Assert.Equal(Axolotl.Config.GradientCheckpointingMode.Offload, offload.GradientCheckpointing);
        Assert.StartsWith("cfg.yml:6:1: 'gradient_checkpointing: offload' also moves", Assert.Single(offload.Warnings));
        var e = Assert.Throws<UserError>(() => Axolotl.Config.ConfigLoader.Parse(Minimal + "gradient_checkpointing: sometimes\n", "cfg.yml"));
        Assert.Contains("'gradient_checkpointing' must be one of false, true, offload, offload_disk, not 'sometimes'", e.Message);
    }
}
