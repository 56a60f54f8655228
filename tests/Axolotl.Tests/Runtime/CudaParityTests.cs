using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Recipes;
using Axolotl.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Runtime;

/// <summary>A fact that needs a GPU: skipped unless TorchSharp sees CUDA (the TorchSharp-cuda-linux build on a GPU machine).</summary>
public sealed class CudaFactAttribute : FactAttribute
{
    public CudaFactAttribute()
    {
        if (!cuda.is_available()) Skip = "needs CUDA: build with -p:TorchSharpPackage=TorchSharp-cuda-linux on a GPU machine (bench/gpu-check.sh).";
    }
}

/// <summary>A theory about what a machine without CUDA answers: skipped where CUDA is available.</summary>
public sealed class WithoutCudaTheoryAttribute : TheoryAttribute
{
    public WithoutCudaTheoryAttribute()
    {
        if (cuda.is_available()) Skip = "this machine has CUDA, so the GPU is there to be used.";
    }
}

/// <summary>
/// The same computations on the GPU and on the CPU agree within fp32 rounding (bench/gpu-check.sh runs these; on a
/// machine without CUDA they are skipped). The CPU results are themselves pinned to transformers/PEFT elsewhere.
/// </summary>
[Collection(GlobalTorchRng.Name)]
[Trait("Category", "Gpu")]
public class CudaParityTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static readonly Device Gpu = new(DeviceType.CUDA, 0);

    sealed class QuietReporter : IRecipeReporter;

    static CausalLM TinyLlama(Device device)
    {
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        return ModelLoading.Place(model, device, new QuietReporter());
    }

    static Tensor Batch(Device device) =>
        tensor(Enumerable.Range(0, 2 * 24).Select(i => (long)(3 + i * 37 % 500)).ToArray(), [2, 24], device: device);

    double MaxDiff(Tensor gpu, Tensor cpu, string what)
    {
        double diff = (gpu.cpu() - cpu).abs().max().item<float>();
        output.WriteLine($"{what}: max |cuda - cpu| = {diff:E2}");
        return diff;
    }

    [CudaFact]
    public void Logits_and_loss_on_cuda_match_the_cpu()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var cpu = TinyLlama(CPU);
        var gpu = TinyLlama(Gpu);
        Assert.Equal(DeviceType.CUDA, gpu.Device.type);
        var logitsCpu = cpu.forward(Batch(CPU));
        var logitsGpu = gpu.forward(Batch(Gpu));
        Assert.Equal(DeviceType.CUDA, logitsGpu.device_type);
        Assert.True(MaxDiff(logitsGpu, logitsCpu, "logits") < 1e-4);
        var (sumCpu, tokens) = cpu.LossSum(Batch(CPU), Batch(CPU));
        var (sumGpu, tokensGpu) = gpu.LossSum(Batch(Gpu), Batch(Gpu));
        Assert.Equal(tokens, tokensGpu);
        Assert.Equal((double)sumCpu.item<float>() / tokens, (double)sumGpu.item<float>() / tokens, 1e-4);
    }

    static List<Example> Examples()
    {
        var random = new Random(8);
        return [.. Enumerable.Range(0, 16).Select(_ =>
        {
            var ids = Enumerable.Range(0, random.Next(8, 30)).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        })];
    }

    /// <summary>Five packed LoRA steps with gradient checkpointing: the same losses and adapter on both devices.</summary>
    [CudaFact]
    public void Lora_training_on_cuda_follows_the_cpu_run()
    {
        using var scope = NewDisposeScope();
        (double[] Losses, Dictionary<string, Tensor> Adapter) Run(Device device)
        {
            manual_seed(3);
            var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
            Lora.Apply(model, new LoraSettings { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] });
            model.model.GradientCheckpointing = true;
            ModelLoading.Place(model, device, new QuietReporter());
            var packing = new PackingOptions { SequenceLen = 64, MicroBatchSize = 2 };
            var state = new Trainer(model, new TrainingOptions
            {
                MicroBatchSize = 2, MaxSteps = 5, LearningRate = 1e-3, LrScheduler = "constant", LoggingSteps = 1, Packing = packing,
            }).Train(Examples());
            var adapter = model.named_parameters().Where(p => p.parameter.requires_grad).ToDictionary(p => p.name, p => p.parameter.detach().cpu());
            return (state.LogHistory.Where(e => e["loss"] != null).Select(e => (double)e["loss"]!).ToArray(), adapter);
        }
        var (cpuLosses, cpuAdapter) = Run(CPU);
        var (gpuLosses, gpuAdapter) = Run(Gpu);
        output.WriteLine($"cpu {string.Join(", ", cpuLosses)}\ncuda {string.Join(", ", gpuLosses)}");
        Assert.Equal(5, gpuLosses.Length);
        for (int i = 0; i < cpuLosses.Length; i++) Assert.Equal(cpuLosses[i], gpuLosses[i], 1e-4);
        Assert.Equal(cpuAdapter.Keys.Order(), gpuAdapter.Keys.Order());
        foreach (var (name, value) in cpuAdapter) Assert.True(MaxDiff(gpuAdapter[name], value, name) < 1e-4, name);
    }

    /// <summary>
    /// GPU dropout cannot be saved and restored through TorchSharp, so each layer starts from a seed the recomputation
    /// sets again: with dropout on, checkpointed gradients equal those of the plain pass from the same seed.
    /// </summary>
    [CudaFact]
    public void Gradient_checkpointing_with_dropout_on_cuda_recomputes_the_same_masks()
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        Lora.Apply(model, new LoraSettings { Rank = 4, Alpha = 8, Dropout = 0.3, TargetModules = ["q_proj", "v_proj", "down_proj"] });
        ModelLoading.Place(model, Gpu, new QuietReporter());
        model.train();
        Dictionary<string, Tensor> Grads(bool checkpointing, long seed)
        {
            model.model.GradientCheckpointing = checkpointing;
            manual_seed(seed);
            model.LossSumBackward(Batch(Gpu), Batch(Gpu), 1.0);
            var grads = model.named_parameters().Where(p => p.parameter.requires_grad).ToDictionary(p => p.name, p => p.parameter.grad!.cpu());
            model.zero_grad();
            return grads;
        }
        var plain = Grads(false, 11);
        var recomputed = Grads(true, 11);
        var otherSeed = Grads(false, 12);
        foreach (var (name, g) in plain) Assert.True(MaxDiff(recomputed[name], g, name) < 1e-5, name);
        Assert.Contains(plain, kv => MaxDiff(otherSeed[kv.Key], kv.Value, "other seed " + kv.Key) > 1e-4); // dropout is really on
    }

    [CudaFact]
    public void Quantized_weights_on_cuda_hold_the_cpu_codes()
    {
        using var scope = NewDisposeScope();
        manual_seed(4);
        var weight = randn(96, 160);
        using var onCpu = Nf4Weight.Quantize(weight, doubleQuant: true);
        using var onGpu = Nf4Weight.Quantize(weight.to(Gpu), doubleQuant: true);
        Assert.Equal(DeviceType.CUDA, onGpu.Packed.device_type);
        Assert.True(onCpu.Packed.equal(onGpu.Packed.cpu()).item<bool>());
        Assert.True(onCpu.NestedAbsmax!.Codes.equal(onGpu.NestedAbsmax!.Codes.cpu()).item<bool>());

        var cpu = TinyLlama(CPU);
        Quantizer.QuantizeLinears(cpu, new QuantizationSettings(QuantKind.Nf4));
        var gpu = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        Quantizer.QuantizeLinears(gpu, new QuantizationSettings(QuantKind.Nf4));
        ModelLoading.Place(gpu, Gpu, new QuietReporter());
        using var _ = no_grad();
        Assert.True(MaxDiff(gpu.forward(Batch(Gpu)), cpu.forward(Batch(CPU)), "NF4 logits") < 1e-4);
    }

    [CudaFact]
    public void Generation_on_cuda_picks_the_cpu_tokens()
    {
        using var scope = NewDisposeScope();
        var options = new GenerationOptions { MaxNewTokens = 12 };
        var sampling = options with { DoSample = true, TopK = 30, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 5 };
        var cpu = TinyLlama(CPU);
        var gpu = TinyLlama(Gpu);
        int[] prompt = [1, 45, 300, 7, 88];
        Assert.Equal(Generation.Generate(cpu, prompt, options), Generation.Generate(gpu, prompt, options));
        // Sampling draws on the host from the same seed: only a near-tie between devices' probabilities could differ.
        Assert.Equal(Generation.Generate(cpu, prompt, sampling), Generation.Generate(gpu, prompt, sampling));
    }
}
