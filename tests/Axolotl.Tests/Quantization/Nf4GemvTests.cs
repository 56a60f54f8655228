using Axolotl.Models;
using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Quantization;

/// <summary>Decoding's NF4 product read from the 4-bit codes against the product with the dequantized weight.</summary>
public class Nf4GemvTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Theory]
    [InlineData(1, 64, 3, true, false, ScalarType.BFloat16)]
    [InlineData(4, 512, 130, true, true, ScalarType.BFloat16)]   // several rows, bias, a tail of weight rows
    [InlineData(2, 2048, 1024, false, false, ScalarType.BFloat16)] // plain fp32 absmax
    [InlineData(1, 256, 70, true, true, ScalarType.Float32)]
    [InlineData(1, 2048, 300, true, false, ScalarType.BFloat16)] // decoding: one row, the register-accumulator loop over many blocks
    public void Matches_the_product_with_the_dequantized_weight(int rows, int inFeatures, int outFeatures, bool doubleQuant, bool withBias, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(21);
        var weight = (0.05 * randn([outFeatures, inFeatures], generator: generator)).to(dtype);
        using var nf4 = Nf4Weight.Quantize(weight, doubleQuant);
        var x = randn([1, rows, inFeatures], generator: generator).to(dtype);
        var bias = withBias ? randn([outFeatures], generator: generator).to(dtype) : null;
        Assert.True(Nf4Gemv.Applies(x, nf4, bias));
        var y = Nf4Gemv.Linear(x, nf4, bias);
        Assert.Equal(new long[] { 1, rows, outFeatures }, y.shape);
        Assert.Equal(dtype, y.dtype);
        // The dequantized values (rounded to the stored dtype, as bnb does), multiplied in fp64.
        var exact = x.to(ScalarType.Float64).matmul(nf4.Dequantize(ScalarType.Float32).to(ScalarType.Float64).t());
        if (bias is not null) exact += bias.to(ScalarType.Float64);
        double scale = exact.abs().max().item<double>();
        double worst = (y.to(ScalarType.Float64) - exact).abs().max().item<double>() / scale;
        output.WriteLine($"rows {rows}, {inFeatures}→{outFeatures}, double quant {doubleQuant}, {dtype}: worst error {worst:E2} of the largest output");
        // bf16: the output's own rounding (2⁻⁹ relative) and little else; fp32: summation order only.
        Assert.True(worst < (dtype == ScalarType.BFloat16 ? 4e-3 : 1e-5), $"{worst}");
        // Outside its domain the dequantizing path serves.
        Assert.False(Nf4Gemv.Applies(randn(5, inFeatures).to(dtype), nf4, null));
    }

    [Fact]
    public void Qlora_greedy_decoding_reads_the_codes_and_keeps_the_dequantizing_paths_tokens()
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.BFloat16, ScalarType.BFloat16);
        Quantizer.QuantizeLinears(model, new QuantizationSettings(QuantKind.Nf4));
        int[] prompt = [1, 5, 9, 60, 17];
        var options = new GenerationOptions { MaxNewTokens = 12 };
        var fused = Generation.Generate(model, prompt, options);
        List<int> dequantized;
        DecodeMatmul.OffOnThisThread = true;
        try { dequantized = Generation.Generate(model, prompt, options); }
        finally { DecodeMatmul.OffOnThisThread = false; }
        output.WriteLine($"codes {string.Join(" ", fused)}; dequantized {string.Join(" ", dequantized)}");
        Assert.Equal(dequantized, fused);
    }
}
