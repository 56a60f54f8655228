using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Recipes;
using static TorchSharp.torch;

namespace Axolotl.Tests.Quantization;

public class QuantizingLoadTests
{
    /// <summary>Same quantized layers with equal dequantized weights, and equal remaining parameters; returns the quantized layers of <paramref name="actual"/>.</summary>
    static Dictionary<string, QuantizedLinear> AssertSameWeights(CausalLM reference, IEnumerable<string> quantizedPaths, CausalLM actual)
    {
        var expected = reference.named_modules().Where(m => m.module is QuantizedLinear).ToDictionary(m => m.name, m => (QuantizedLinear)m.module);
        var layers = actual.named_modules().Where(m => m.module is QuantizedLinear).ToDictionary(m => m.name, m => (QuantizedLinear)m.module);
        Assert.Equal(quantizedPaths.Order(), layers.Keys.Order());
        foreach (var (name, layer) in layers)
            Assert.True(layer.Weight.Dequantize().equal(expected[name].Weight.Dequantize()).all().item<bool>(), $"{name} differs");
        var unquantized = reference.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in actual.named_parameters())
            Assert.True(p.equal(unquantized[name]).all().item<bool>(), $"{name} differs");
        return layers;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Quantizing_while_reading_gives_the_model_quantized_after_a_full_load(bool fourBit)
    {
        using var scope = NewDisposeScope();
        var dir = TestSetup.Data("reference", "models", "tiny-llama");
        var config = new AxolotlConfig { BaseModel = dir, Adapter = fourBit ? AdapterKind.Qlora : AdapterKind.Lora, LoadIn4Bit = fourBit, LoadIn8Bit = !fourBit };
        var settings = QuantizationSettings.FromConfig(config)!;
        var architecture = DecoderConfig.FromFolder(dir);

        var reference = CausalLM.FromPretrained(dir, ScalarType.BFloat16, ScalarType.BFloat16);
        var quantizedPaths = Quantizer.QuantizeLinears(reference, settings);
        var loaded = ModelLoading.LoadBase(config, architecture, ScalarType.BFloat16, ScalarType.BFloat16);

        Assert.Empty(loaded.modules().OfType<Linear>().Where(l => l != loaded.lm_head));
        AssertSameWeights(reference, quantizedPaths, loaded);
        var ids = tensor(new long[] { 1, 5, 9, 200, 17 }).unsqueeze(0);
        using var _ = no_grad();
        Assert.True(loaded.forward(ids).equal(reference.forward(ids)).all().item<bool>());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Random_init_quantized_weight_by_weight_equals_the_full_random_model_quantized(bool fourBit)
    {
        using var scope = NewDisposeScope();
        var dir = TestSetup.Data("reference", "models", "tiny-llama");
        var config = new AxolotlConfig { BaseModel = dir, RandomInitWeights = true, Seed = 5, Adapter = fourBit ? AdapterKind.Qlora : AdapterKind.Lora, LoadIn4Bit = fourBit, LoadIn8Bit = !fourBit };
        var settings = QuantizationSettings.FromConfig(config)!;
        var architecture = DecoderConfig.FromFolder(dir);

        // The old way: the whole model drawn in bf16, then quantized.
        var reference = CausalLM.Create(architecture, ScalarType.BFloat16, ScalarType.BFloat16);
        reference.InitializeWeights(5);
        var quantizedPaths = Quantizer.QuantizeLinears(reference, settings);
        var built = ModelLoading.RandomBase(config, architecture, ScalarType.BFloat16, ScalarType.BFloat16);

        var actual = AssertSameWeights(reference, quantizedPaths, built);
        // Random, not left empty: the quantized weights spread as normal(0, initializer_range) does.
        double spread = actual.Values.First().Weight.Dequantize().to(ScalarType.Float32).std().item<float>();
        Assert.InRange(spread, 0.5 * architecture.InitializerRange, 2 * architecture.InitializerRange);
    }
}
