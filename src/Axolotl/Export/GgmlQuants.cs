using System.Buffers.Binary;

namespace Axolotl.Export;

/// <summary>ggml's tensor types, by the numbers ggml.h gives them (those this project writes and reads).</summary>
internal enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
}

/// <summary>
/// ggml's block formats for the types written here, re-derived from ggml-quants.c's reference (ref) quantizers:
/// Q8_0 is 32 weights as one fp16 scale d = max|x| / 127 and 32 int8 round(x / d) (half away from zero); Q4_0 is 32
/// weights as d = m / -8, where m is the weight of largest magnitude with its sign, and 16 bytes of 4-bit codes
/// min(15, trunc(x / d + 8.5)), weight j in the low nibble of byte j and weight j + 16 in its high nibble.
/// </summary>
internal static class GgmlQuants
{
    public const int BlockSize = 32;

    public static int BytesPerBlock(GgmlType type) => type switch
    {
        GgmlType.Q8_0 => 2 + 32,
        GgmlType.Q4_0 => 2 + 16,
        _ => throw new ArgumentException($"{type} is not a block type written here"),
    };

    /// <summary>Bytes a tensor of <paramref name="elements"/> weights takes in <paramref name="type"/>.</summary>
    public static long ByteSize(GgmlType type, long elements) => type switch
    {
        GgmlType.F32 => elements * 4,
        GgmlType.F16 or GgmlType.BF16 => elements * 2,
        GgmlType.Q8_0 or GgmlType.Q4_0 => elements / BlockSize * BytesPerBlock(type),
        _ => throw new UserError($"GGUF tensor type {type} is not supported (F32, F16, BF16, Q8_0 and Q4_0 are)."),
    };

    public static bool IsBlockType(GgmlType type) => type is GgmlType.Q8_0 or GgmlType.Q4_0;

    /// <summary>Quantizes <paramref name="x"/> (a whole number of blocks) into <paramref name="output"/>.</summary>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> x, Span<byte> output)
    {
        int blocks = x.Length / BlockSize, size = BytesPerBlock(type);
        for (int b = 0; b < blocks; b++)
        {
            var block = x.Slice(b * BlockSize, BlockSize);
            var dst = output.Slice(b * size, size);
            if (type == GgmlType.Q8_0) QuantizeQ8_0(block, dst); else QuantizeQ4_0(block, dst);
        }
    }

    /// <summary>The weights a quantized tensor stands for: d · q per block, as ggml's dequantize_row_* computes them.</summary>
    public static void Dequantize(GgmlType type, ReadOnlySpan<byte> data, Span<float> output)
    {
        int blocks = output.Length / BlockSize, size = BytesPerBlock(type);
        for (int b = 0; b < blocks; b++)
        {
            var src = data.Slice(b * size, size);
            var dst = output.Slice(b * BlockSize, BlockSize);
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(src);
            if (type == GgmlType.Q8_0)
                for (int j = 0; j < 32; j++) dst[j] = (sbyte)src[2 + j] * d;
            else
                for (int j = 0; j < 16; j++)
                {
                    dst[j] = ((src[2 + j] & 0x0F) - 8) * d;
                    dst[j + 16] = ((src[2 + j] >> 4) - 8) * d;
                }
        }
    }

    static void QuantizeQ8_0(ReadOnlySpan<float> x, Span<byte> dst)
    {
        float amax = 0;
        foreach (var v in x) amax = Math.Max(amax, Math.Abs(v));
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteHalfLittleEndian(dst, (Half)d);
        for (int j = 0; j < 32; j++) dst[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    static void QuantizeQ4_0(ReadOnlySpan<float> x, Span<byte> dst)
    {
        float amax = 0, max = 0;
        foreach (var v in x)
            if (Math.Abs(v) > amax) { amax = Math.Abs(v); max = v; }
        float d = max / -8f;
        float id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteHalfLittleEndian(dst, (Half)d);
        for (int j = 0; j < 16; j++)
        {
            // x / d lies in [-8, 8], so x / d + 8.5 is positive and the C cast to int8 is a floor.
            int low = Math.Min(15, (int)(x[j] * id + 8.5f));
            int high = Math.Min(15, (int)(x[j + 16] * id + 8.5f));
            dst[2 + j] = (byte)(low | (high << 4));
        }
    }
}
