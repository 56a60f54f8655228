using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Tests.Adapters;

/// <summary>LoRA+ (PEFT's create_loraplus_optimizer as Axolotl uses it): B learns at lr × ratio, A at lr.</summary>
public class LoraPlusTests
{
    [Fact]
    public void First_adam_step_moves_b_by_lr_times_ratio_and_a_by_lr()
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        Lora.Load(model, TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20")); // B ≠ 0, so A gets gradients too
        var before = Lora.Layers(model).Select(l => (A: l.Layer.lora_A.weight.detach().clone(), B: l.Layer.lora_B.weight.detach().clone())).ToList();
        var ids = Enumerable.Range(0, 32).Select(i => (i * 37) % 500 + 3).ToArray();
        var options = new TrainingOptions { MaxSteps = 1, LearningRate = 1e-3, LrScheduler = "constant", MaxGradNorm = 0, LoggingSteps = 1, LoraPlusLrRatio = 16 };
        new Trainer(model, options).Train([new Example(ids, ids)]);
        var layers = Lora.Layers(model).ToList();
        // Adam's first step is lr · g/(|g| + eps): at most lr, and close to it wherever the gradient is not tiny.
        float maxA = layers.Select((l, i) => (l.Layer.lora_A.weight - before[i].A).abs().max().item<float>()).Max();
        float maxB = layers.Select((l, i) => (l.Layer.lora_B.weight - before[i].B).abs().max().item<float>()).Max();
        Assert.InRange(maxA, 0.9e-3f, 1.0001e-3f);
        Assert.InRange(maxB, 0.9 * 16e-3f, 16.001e-3f);
    }
}
