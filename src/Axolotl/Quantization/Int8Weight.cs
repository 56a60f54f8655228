using static TorchSharp.torch;

namespace Axolotl.Quantization;

/// <summary>
/// load_in_8bit: bitsandbytes' row-wise int8 weight (int8_vectorwise_quant, as Linear8bitLt stores it): per output row
/// absmax in fp32, q = round-half-even(w × 127/absmax) (a zero row gives zeros). The forward pass here multiplies
/// with the dequantized weight q × absmax/127 in the compute dtype. bnb's LLM.int8 matmul also quantizes the
/// activations to int8 per row and, with its default threshold 6.0, keeps outlier activation columns in 16 bits; this
/// implementation quantizes only the weight, which is LLM.int8 with threshold 0 minus the activation rounding.
/// </summary>
internal sealed class Int8Weight : IDisposable
{
    /// <summary>int8 [out, in].</summary>
    public Tensor Codes { get; }
    /// <summary>fp32 [out].</summary>
    public Tensor RowAbsmax { get; }
    public ScalarType DType { get; }

    Int8Weight(Tensor codes, Tensor rowAbsmax, ScalarType dtype) { Codes = codes; RowAbsmax = rowAbsmax; DType = dtype; }

    public long Bytes => Codes.numel() + RowAbsmax.numel() * 4;

    public static Int8Weight Quantize(Tensor weight)
    {
        using var scope = NewDisposeScope();
        var w = weight.detach().to(ScalarType.Float32);
        var absmax = w.abs().amax([1]);
        var scaled = (w * (full_like(absmax, 127.0f) / absmax).unsqueeze(1)).round();
        scaled = where(scaled.isnan(), zeros_like(scaled), scaled);
        return new Int8Weight(scaled.to(ScalarType.Int8).MoveToOuterDisposeScope(), absmax.MoveToOuterDisposeScope(), weight.dtype);
    }

    /// <summary>A copy on <paramref name="device"/>; this one is disposed.</summary>
    public Int8Weight To(Device device)
    {
        var moved = new Int8Weight(Codes.to(device).DetachFromDisposeScope(), RowAbsmax.to(device).DetachFromDisposeScope(), DType);
        Dispose();
        return moved;
    }

    public Tensor Dequantize(ScalarType? type = null)
    {
        using var scope = NewDisposeScope();
        var result = (Codes.to(ScalarType.Float32) * (RowAbsmax * (1.0f / 127.0f)).unsqueeze(1)).to(DType);
        if (type is { } t && t != DType) result = result.to(t);
        return result.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        Codes.Dispose();
        RowAbsmax.Dispose();
    }
}
