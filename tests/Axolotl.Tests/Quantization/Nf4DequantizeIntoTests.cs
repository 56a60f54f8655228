using Axolotl.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Quantization;

public class Nf4DequantizeIntoTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16, ScalarType.BFloat16, true, 7, 45)]      // odd count, one partial block
    [InlineData(ScalarType.BFloat16, ScalarType.Float32, false, 7, 45)]
    [InlineData(ScalarType.Float32, ScalarType.BFloat16, true, 7, 45)]
    [InlineData(ScalarType.Float32, ScalarType.Float32, false, 7, 45)]
    [InlineData(ScalarType.BFloat16, ScalarType.BFloat16, true, 300, 1000)] // several parallel chunks of blocks
    public void Writing_into_a_buffer_gives_exactly_the_tensor_path_values(ScalarType stored, ScalarType output, bool doubleQuant, int rows, int columns)
    {
        using var scope = NewDisposeScope();
        var weight = (randn(rows, columns, generator: new Generator(7)) * 0.02).to(stored);
        weight[0, 3] = tensor(0.0f).to(stored); // exact zeros and one all-zero block (absmax 0) are edge cases of the scale
        if (rows * columns > 128) weight.view(-1).narrow(0, 64, 64).zero_();
        using var q = Nf4Weight.Quantize(weight, doubleQuant);
        var expected = q.Dequantize(output);
        var buffer = full(rows, columns, float.NaN, dtype: output);
        q.DequantizeInto(buffer);
        Assert.Equal(output, buffer.dtype);
        Assert.True(expected.to(ScalarType.Float32).equal(buffer.to(ScalarType.Float32)).all().item<bool>(), "DequantizeInto differs from Dequantize");
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void The_avx2_blocks_and_the_scalar_loop_write_the_same_bf16_bits(ScalarType stored)
    {
        using var scope = NewDisposeScope();
        var weight = (randn(130, 64 * 5 + 6, generator: new Generator(9)) * 0.05).to(stored);
        weight.view(-1).narrow(0, 128, 64).zero_();
        using var q = Nf4Weight.Quantize(weight, doubleQuant: true);
        var vector = empty(weight.shape, ScalarType.BFloat16);
        var scalar = empty(weight.shape, ScalarType.BFloat16);
        q.DequantizeInto(vector);
        Nf4Weight.ScalarOnThisThread = true;
        try { q.DequantizeInto(scalar); }
        finally { Nf4Weight.ScalarOnThisThread = false; }
        Assert.True(vector.bytes.SequenceEqual(scalar.bytes), "the bf16 bits differ");
    }

    [Fact]
    public void The_matmul_buffer_is_reused_and_its_values_follow_each_weight()
    {
        using var scope = NewDisposeScope();
        var a = new Nf4Quantized(Nf4Weight.Quantize(randn(64, 96, generator: new Generator(1)).to(ScalarType.BFloat16), true));
        var b = new Nf4Quantized(Nf4Weight.Quantize(randn(32, 96, generator: new Generator(2)).to(ScalarType.BFloat16), true));
        var first = a.DequantizeForMatmul(ScalarType.BFloat16);
        Assert.True(first.equal(a.Dequantize(ScalarType.BFloat16)).all().item<bool>());
        var second = b.DequantizeForMatmul(ScalarType.BFloat16);
        Assert.True(second.equal(b.Dequantize(ScalarType.BFloat16)).all().item<bool>());
        // The smaller weight was written over the start of the larger one's memory.
        Assert.True(first.reshape(-1).narrow(0, 0, second.numel()).equal(second.reshape(-1)).all().item<bool>());
    }
}

public class Nf4HostQuantizationTests
{
    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float32)]
    public void The_avx2_blocks_quantize_exactly_as_the_scalar_loop(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var weight = (randn(64, 64 * 6 + 10, generator: new Generator(11)) * 0.02).to(dtype);
        var flat = weight.view(-1);
        flat.narrow(0, 64, 64).zero_();                       // absmax 0: every scaled value NaN, code 0
        flat[200] = tensor(float.NaN).to(dtype);              // a NaN block: the scalar loop decides it
        flat[300] = tensor(1.0f).to(dtype);                   // values exactly on thresholds of their block's absmax 1
        for (int k = 0; k < 15; k++) flat[301 + k] = tensor(Nf4Weight.Thresholds[k]).to(dtype);
        (byte[] Packed, float[] Absmax) Run(bool scalar)
        {
            Nf4Weight.ScalarOnThisThread = scalar;
            try
            {
                using var q = Nf4Weight.Quantize(weight, doubleQuant: false);
                return (q.Packed.data<byte>().ToArray(), q.Absmax!.data<float>().ToArray());
            }
            finally { Nf4Weight.ScalarOnThisThread = false; }
        }
        var (vectorCodes, vectorAbsmax) = Run(scalar: false);
        var (scalarCodes, scalarAbsmax) = Run(scalar: true);
        Assert.Equal(scalarCodes, vectorCodes);
        Assert.Equal(scalarAbsmax.Select(BitConverter.SingleToInt32Bits), vectorAbsmax.Select(BitConverter.SingleToInt32Bits));
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, 7, 45)]
    [InlineData(ScalarType.Float32, 7, 45)]
    [InlineData(ScalarType.BFloat16, 300, 1000)]
    public void Quantizing_block_by_block_on_the_host_gives_the_tensor_paths_codes_and_absmax(ScalarType dtype, int rows, int columns)
    {
        using var scope = NewDisposeScope();
        var weight = (randn(rows, columns, generator: new Generator(3)) * 0.02).to(dtype);
        weight.view(-1).narrow(0, 64, 64).zero_(); // a zero block: absmax 0, every code 0
        weight[0, 0] = tensor(Nf4Weight.Thresholds[9] * 0.5f).to(dtype); // values on and near the tree's pivots
        using var q = Nf4Weight.Quantize(weight, doubleQuant: false);
        var (codes, absmax) = Nf4Weight.Codes(weight);
        var packed = codes[TensorIndex.Slice(0, null, 2)].bitwise_left_shift(tensor(4L)).bitwise_or(codes[TensorIndex.Slice(1, null, 2)]);
        Assert.Equal(packed.data<byte>().ToArray(), q.Packed.data<byte>().ToArray());
        Assert.Equal(absmax.data<float>().ToArray(), q.Absmax!.data<float>().ToArray());
    }
}
