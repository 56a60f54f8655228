using Axolotl.Adapters;
using Axolotl.Models;
using Axolotl.Quantization;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Tests.Quantization;

public class QuantizedLinearTests
{
    static CausalLM Model(ScalarType dtype) =>
        CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), dtype, dtype);

    static Tensor Ids() => tensor(new long[] { 1, 5, 9, 200, 17, 3, 88, 400 }).unsqueeze(0);

    [Fact]
    public void Int8_rows_are_rounded_half_even_against_row_absmax()
    {
        using var scope = NewDisposeScope();
        var w = tensor(new float[] { 1.0f, -0.5f, 0.004f, 0f, /* row 2 */ 0f, 0f, 0f, 0f, /* row 3 */ 2f, 1f, -0.25f, 3f / 254 }).reshape(3, 4);
        using var q = Int8Weight.Quantize(w);
        // 127 × -0.5 = -63.5 → -64 (half to even); 127 × 0.004 = 0.508 → 1; a zero row stays zero.
        Assert.Equal(new sbyte[] { 127, -64, 1, 0, 0, 0, 0, 0, 127, 64, -16, 1 }, q.Codes.data<sbyte>().ToArray());
        Assert.Equal(new[] { 1f, 0f, 2f }, q.RowAbsmax.data<float>().ToArray());
        var back = q.Dequantize().data<float>().ToArray();
        Assert.Equal(-64 * (1f * (1f / 127f)), back[1]);
        Assert.Equal(0f, back[5]);
    }

    [Theory]
    [InlineData("Nf4")]
    [InlineData("Int8")]
    public void Forward_and_input_gradient_use_the_dequantized_weight_and_the_weight_gets_none(string kindName)
    {
        var kind = Enum.Parse<QuantKind>(kindName);
        using var scope = NewDisposeScope();
        var linear = new Linear(64, 48, true, ScalarType.Float32);
        using (no_grad())
        {
            linear.weight.normal_(0, 0.05, new Generator(1));
            linear.bias!.normal_(0, 0.1, new Generator(2));
        }
        var bias = linear.bias!.detach().clone();
        var layer = QuantizedLinear.From(linear, w => kind == QuantKind.Nf4
            ? new Nf4Quantized(Nf4Weight.Quantize(w, true)) : new Int8Quantized(Int8Weight.Quantize(w)));
        var w = layer.Weight.Dequantize();
        var x = randn(3, 5, 64, generator: new Generator(4)).requires_grad_(true);
        var y = layer.forward(x);
        var expected = x.detach().matmul(w.t()) + bias;
        Assert.True((y - expected).abs().max().item<float>() < 1e-5);
        var g = randn(3, 5, 48, generator: new Generator(5));
        y.backward([g]);
        Assert.True((x.grad! - g.matmul(w)).abs().max().item<float>() < 1e-5);
        Assert.Empty(layer.parameters().Where(p => p.requires_grad));
    }

    [Fact]
    public void Qlora_base_weights_take_at_most_035_of_bf16_bytes()
    {
        using var scope = NewDisposeScope();
        var model = Model(ScalarType.BFloat16);
        var linears = model.named_modules().Where(m => m.module is Linear && m.name != "lm_head")
            .Select(m => ((Linear)m.module).weight.numel()).ToList();
        long bf16Bytes = linears.Sum() * 2;
        var quantized = Quantizer.QuantizeLinears(model, new QuantizationSettings(QuantKind.Nf4));
        Assert.Equal(14, quantized.Count);
        Assert.DoesNotContain("lm_head", quantized);
        long bytes = Quantizer.QuantizedWeightBytes(model);
        // 0.5 byte per weight + 1 byte per block of 64 + 4 per block of 256 blocks: about 0.26 of bf16.
        Assert.True(bytes <= 0.35 * bf16Bytes, $"{bytes} vs bf16 {bf16Bytes}");
        Assert.True(bytes >= 0.25 * bf16Bytes);
        Assert.DoesNotContain(model.named_parameters(), p => p.name.EndsWith("proj.weight"));
        Assert.Equal(linears.Sum(), Quantizer.QuantizedWeightCount(model)); // still counted as the model's size
    }

    [Fact]
    public void Qlora_adapter_trains_saves_reloads_and_merges()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model(ScalarType.Float32);
        Quantizer.QuantizeLinears(model, new QuantizationSettings(QuantKind.Nf4));
        var settings = new LoraSettings { Rank = 4, Alpha = 8, TargetModules = Lora.LinearModuleNames(model) };
        Assert.Equal(14, Lora.Apply(model, settings).Count);
        using (no_grad())
            foreach (var (_, layer) in Lora.Layers(model)) layer.lora_B.weight.normal_(0, 0.02, new Generator(9));
        // Gradients reach the adapter through the quantized layers.
        var (loss, _) = model.LossSum(Ids(), Ids());
        loss.backward();
        Assert.All(Lora.Layers(model), l => Assert.True(l.Layer.lora_A.weight.grad!.abs().sum().item<float>() > 0));
        using var __ = no_grad();
        var logits = model.forward(Ids());

        Lora.Save(model, settings, dir.Path, "tiny-llama");
        var reloaded = Model(ScalarType.Float32);
        Quantizer.QuantizeLinears(reloaded, new QuantizationSettings(QuantKind.Nf4));
        Lora.Load(reloaded, dir.Path);
        Assert.Equal(0, (reloaded.forward(Ids()) - logits).abs().max().item<float>());

        // merge: the dequantized base plus B·A, as plain Linear layers
        Lora.MergeAndUnload(reloaded);
        Assert.Empty(reloaded.modules().OfType<QuantizedLinear>());
        Assert.True((reloaded.forward(Ids()) - logits).abs().max().item<float>() < 1e-4);
    }
}
