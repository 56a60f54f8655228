using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Recipes;
using Axolotl.Tests.Models;
using Axolotl.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Runtime;

/// <summary>
/// Device-correctness without a GPU. A CUDA run fails wherever a tensor is made without the model's device (a
/// torch.zeros(...) lacking device:), or where something moved with the model is left behind. Two traps catch both here:
/// <list type="bullet">
/// <item>Stray tensors: torch's default device is set to meta while a CPU model trains, evaluates, checkpoints, resumes
/// and generates. Anything made without an explicit device lands on meta, where mixing it with the CPU model's tensors or
/// reading it (.item()) throws.</item>
/// <item>Left behind: the model is moved to meta as a GPU run moves it to cuda; every parameter, buffer and quantized
/// code must follow, and a forward and backward pass must run there, with nothing on the CPU.</item>
/// </list>
/// The default device is global, so these run alone.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class DeviceAuditTests
{
    /// <summary>Runs <paramref name="body"/> with torch's default device set to meta.</summary>
    static void StrayTensorsOnMeta(Action body)
    {
        var before = get_default_device();
        set_default_device(META);
        try { body(); }
        finally { set_default_device(before); }
    }

    static CausalLM TinyLlama() => CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);

    [Fact]
    public void The_trap_catches_a_tensor_made_without_a_device()
    {
        using var scope = NewDisposeScope();
        var onCpu = ones(4, device: CPU);
        StrayTensorsOnMeta(() =>
        {
            Assert.Equal(DeviceType.META, zeros(4).device_type);
            Assert.ThrowsAny<Exception>(() => (onCpu + zeros(4)).sum().item<float>());
            Assert.Equal(4f, (onCpu + zeros(4, device: onCpu.device)).sum().item<float>());
        });
        Assert.Equal(DeviceType.CPU, zeros(1).device_type);
    }

    static List<Example> Examples(int count, int seed)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, count).Select(_ =>
        {
            var ids = Enumerable.Range(0, random.Next(6, 30)).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids.Select((id, i) => i < 2 ? Example.IgnoreIndex : id).ToArray());
        })];
    }

    public static TheoryData<string, string, bool> TrainingCases => new()
    {
        { "adamw_torch", "nf4", true },
        { "adafactor", "int8", false },
        { "lion_32bit", "none", true },
        { "sgd", "dora", false },
    };

    /// <summary>
    /// A whole LoRA/QLoRA/DoRA training through the Trainer (dropout, gradient checkpointing, packed or padded batches,
    /// evaluation, a checkpoint, a resume from it) with every optimizer, then generation: nothing strays off the model's device.
    /// </summary>
    [Theory]
    [MemberData(nameof(TrainingCases))]
    public void Training_evaluation_checkpoints_resume_and_generation_keep_every_tensor_on_the_models_device(string optimizer, string variant, bool packed)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        manual_seed(5);
        var model = TinyLlama();
        // Quantizing happens on whatever device the weights are on: audited too.
        if (variant is "nf4" or "int8")
            StrayTensorsOnMeta(() => Quantizer.QuantizeLinears(model, new QuantizationSettings(variant == "nf4" ? QuantKind.Nf4 : QuantKind.Int8)));
        // Models are built on the CPU (layer constructors take no device) and then placed; LoRA wraps before placing.
        var lora = new LoraSettings
        {
            Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            UseDora = variant == "dora",
        };
        Lora.Apply(model, lora);
        model.model.GradientCheckpointing = true;
        var packing = new PackingOptions { SequenceLen = 64, MicroBatchSize = 2 };
        var options = new TrainingOptions
        {
            MicroBatchSize = 2, GradientAccumulationSteps = 2, MaxSteps = 3, LearningRate = 1e-3, Optimizer = optimizer,
            LoggingSteps = 1, EvalSteps = 2, Packing = packed ? packing : null, EvalPacking = packed ? packing : null,
        };
        var checkpoints = new CheckpointOptions(dir.Path, d => Lora.Save(model, lora, d, "tiny-llama")) { SaveSteps = 2 };
        var train = Examples(24, 1);
        var eval = Examples(8, 2);
        TrainerState? first = null, resumed = null;
        List<int>? sampled = null;
        StrayTensorsOnMeta(() =>
        {
            first = new Trainer(model, options, checkpoints: checkpoints).Train(train, eval: eval);
            resumed = new Trainer(model, options with { MaxSteps = 4 }, checkpoints: checkpoints).Train(train, Path.Combine(dir.Path, "checkpoint-2"), eval);
            sampled = Generation.Generate(model, [1, 17, 42, 99], new GenerationOptions
            {
                MaxNewTokens = 4, DoSample = true, TopK = 20, TopP = 0.9, Temperature = 0.8, RepetitionPenalty = 1.3,
            });
        });
        Assert.Equal(3, first!.GlobalStep);
        Assert.Equal(4, resumed!.GlobalStep);
        Assert.Contains(first.LogHistory, e => e["eval_loss"] is JsonNode loss && double.IsFinite((double)loss));
        Assert.All(first.LogHistory.Where(e => e["loss"] != null), e => Assert.True(double.IsFinite((double)e["loss"]!)));
        Assert.Equal(4, sampled!.Count);
    }

    static JsonObject WithRopeScaling(JsonObject config, JsonObject scaling)
    {
        config["rope_scaling"] = scaling;
        return config;
    }

    static JsonObject AttentionDropout(JsonObject config)
    {
        config["attention_dropout"] = 0.1;
        return config;
    }

    /// <summary>Every family and rope scaling, each with its own masks, caches and frequency tables.</summary>
    public static TheoryData<string> Families => new() { "llama-yarn", "llama-dynamic", "qwen3", "gemma2", "phi3-longrope", "mistral" };

    static CausalLM Family(string name)
    {
        var config = name switch
        {
            "llama-yarn" => WithRopeScaling(AttentionDropout(NewFamilyTests.Llama()), new JsonObject { ["rope_type"] = "yarn", ["factor"] = 2.0, ["original_max_position_embeddings"] = 32 }),
            "llama-dynamic" => WithRopeScaling(NewFamilyTests.Llama(), new JsonObject { ["rope_type"] = "dynamic", ["factor"] = 2.0 }),
            "qwen3" => NewFamilyTests.Qwen3(),
            "gemma2" => NewFamilyTests.Gemma2(),
            "phi3-longrope" => PhiLongrope(),
            "mistral" => Sliding(NewFamilyTests.Llama("mistral")),
            _ => throw new ArgumentException(name),
        };
        var model = CausalLM.Create(NewFamilyTests.FromJson(config), ScalarType.Float32, ScalarType.Float32);
        model.InitializeWeights(3);
        return model;
    }

    static JsonObject Sliding(JsonObject config)
    {
        config["sliding_window"] = 4;
        return config;
    }

    static JsonObject PhiLongrope()
    {
        var config = NewFamilyTests.Phi3();
        config["original_max_position_embeddings"] = 16;
        config["max_position_embeddings"] = 64;
        // head_dim 8 → 4 factors each; sequences past 16 tokens switch to the long ones.
        config["rope_scaling"] = new JsonObject
        {
            ["type"] = "longrope",
            ["long_factor"] = new JsonArray(1.0, 1.5, 2.0, 4.0),
            ["short_factor"] = new JsonArray(1.0, 1.1, 1.2, 1.3),
        };
        return config;
    }

    static (Tensor Ids, Tensor Labels, Tensor Positions, Tensor Sequences) PackedBatch(int vocab)
    {
        // Two rows of 20: samples of 7, 9 and 4 tokens, then 12 and 8.
        var lengths = new[] { new[] { 7, 9, 4 }, new[] { 12, 8 } };
        var random = new Random(4);
        var ids = new List<long>(); var labels = new List<long>(); var positions = new List<long>(); var sequences = new List<long>();
        foreach (var row in lengths)
            for (int s = 0; s < row.Length; s++)
                for (int t = 0; t < row[s]; t++)
                {
                    long id = random.Next(3, vocab);
                    ids.Add(id); labels.Add(t == 0 ? -100 : id); positions.Add(t); sequences.Add(s + 1);
                }
        Tensor Make(List<long> values) => tensor(values.ToArray(), [2, 20], device: CPU);
        return (Make(ids), Make(labels), Make(positions), Make(sequences));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Forward_backward_loss_and_generation_of_every_family_keep_every_tensor_on_the_models_device(string family)
    {
        using var scope = NewDisposeScope();
        manual_seed(9);
        var model = Family(family);
        model.model.GradientCheckpointing = true;
        int vocab = model.Config.VocabSize;
        var (ids, labels, positions, sequences) = PackedBatch(vocab);
        double packedLoss = 0, plainLoss = 0, evalLoss = 0;
        List<int>? greedy = null, uncached = null;
        StrayTensorsOnMeta(() =>
        {
            model.train();
            (packedLoss, _) = model.LossSumBackward(ids, labels, 1.0, positions, sequences);
            (plainLoss, _) = model.LossSumBackward(ids, labels, 1.0);
            model.eval();
            using (no_grad()) evalLoss = model.LossSum(ids, labels).Sum.item<float>();
            var prompt = Enumerable.Range(0, 18).Select(i => 3 + i * 7 % (vocab - 3)).ToList(); // past longrope's 16
            greedy = Generation.Generate(model, prompt, new GenerationOptions { MaxNewTokens = 3 });
            uncached = Generation.Generate(model, prompt, new GenerationOptions { MaxNewTokens = 3, UseCache = false });
        });
        Assert.True(double.IsFinite(packedLoss) && double.IsFinite(plainLoss) && double.IsFinite(evalLoss));
        Assert.All(model.parameters(), p => Assert.NotNull(p.grad));
        Assert.Equal(greedy, uncached);
    }

    /// <summary>
    /// What a GPU run does to a model: <see cref="ModelLoading.Place"/> moves parameters, LoRA weights and the quantized
    /// codes and scales (not module buffers, so QuantizedLinear moves them itself). Meta stands in for cuda (it has no
    /// kernels for a forward pass, which the stray-tensor trap covers instead).
    /// </summary>
    [Theory]
    [InlineData("Nf4")]
    [InlineData("Int8")]
    public void Placing_a_quantized_LoRA_model_moves_every_weight_quantized_codes_included(string kindName)
    {
        var kind = Enum.Parse<QuantKind>(kindName);
        using var scope = NewDisposeScope();
        manual_seed(2);
        var model = TinyLlama();
        Quantizer.QuantizeLinears(model, new QuantizationSettings(kind));
        Lora.Apply(model, new LoraSettings { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"], UseDora = kind == QuantKind.Int8 });
        var trainableNames = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        ModelLoading.Place(model, META, new QuietReporter());

        Assert.Equal(DeviceType.META, model.Device.type);
        Assert.All(model.named_parameters(), p => Assert.True(p.parameter.device_type == DeviceType.META, p.name));
        Assert.All(model.buffers(), b => Assert.Equal(DeviceType.META, b.device_type));
        // Moving replaces each parameter: requires_grad goes along, so the optimizer (made after) sees the same set.
        Assert.Equal(trainableNames, model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList());
        var quantized = model.modules().OfType<QuantizedLinear>().ToList();
        Assert.Equal(7 * 2, quantized.Count);
        foreach (var q in quantized)
        {
            IEnumerable<Tensor?> stored = q.Weight switch
            {
                Nf4Quantized { Stored: var n } => [n.Packed, n.Absmax, n.NestedAbsmax?.Codes, n.NestedAbsmax?.Absmax],
                Int8Quantized { Stored: var i } => [i.Codes, i.RowAbsmax],
                _ => throw new InvalidOperationException(),
            };
            Assert.All(stored.OfType<Tensor>(), t => Assert.Equal(DeviceType.META, t.device_type));
        }
    }

    sealed class QuietReporter : IRecipeReporter;
}
