using System.Buffers.Binary;
using Axolotl.Export;

namespace Axolotl.Tests.Export;

/// <summary>ggml's Q8_0 and Q4_0 blocks, checked byte by byte on blocks worked out by hand from ggml-quants.c's rules.</summary>
public class GgmlQuantsTests
{
    static float[] Ramp() => Enumerable.Range(0, 32).Select(j => (float)(j - 16)).ToArray(); // -16 .. 15

    [Fact]
    public void Q8_0_block_is_an_fp16_scale_and_32_rounded_int8s()
    {
        var bytes = new byte[34];
        GgmlQuants.Quantize(GgmlType.Q8_0, Ramp(), bytes);
        // amax 16 → d = 16/127; q = round(x · 127/16): -16 → -127, 0 → 0, 15 → round(119.06) = 119, -1 → round(-7.94) = -8.
        Assert.Equal((Half)(16f / 127f), BinaryPrimitives.ReadHalfLittleEndian(bytes));
        Assert.Equal(-127, (sbyte)bytes[2 + 0]);
        Assert.Equal(0, (sbyte)bytes[2 + 16]);
        Assert.Equal(119, (sbyte)bytes[2 + 31]);
        Assert.Equal(-8, (sbyte)bytes[2 + 15]);
        // A midpoint rounds away from zero (C's roundf): with amax 127, d = 1 and ±2.5 → ±3.
        var halves = new float[32];
        halves[0] = 127; halves[1] = 2.5f; halves[2] = -2.5f;
        GgmlQuants.Quantize(GgmlType.Q8_0, halves, bytes);
        Assert.Equal(3, (sbyte)bytes[3]);
        Assert.Equal(-3, (sbyte)bytes[4]);
    }

    [Fact]
    public void Q4_0_block_packs_two_nibbles_per_byte_around_8()
    {
        var bytes = new byte[18];
        GgmlQuants.Quantize(GgmlType.Q4_0, Ramp(), bytes);
        // The largest magnitude is -16 (signed), so d = -16 / -8 = 2 and q = min(15, trunc(x/2 + 8.5)).
        Assert.Equal((Half)2f, BinaryPrimitives.ReadHalfLittleEndian(bytes));
        // byte 0: weight 0 (x -16 → q 0) low, weight 16 (x 0 → q 8) high.
        Assert.Equal(0x80, bytes[2]);
        // byte 15: weight 15 (x -1 → trunc(8) = 8) low, weight 31 (x 15 → trunc(16) → clamped 15) high.
        Assert.Equal(0xF8, bytes[2 + 15]);
        var back = new float[32];
        GgmlQuants.Dequantize(GgmlType.Q4_0, bytes, back);
        Assert.Equal(-16f, back[0]);
        Assert.Equal(0f, back[16]);
        Assert.Equal(14f, back[31]); // (15 - 8) · 2
    }

    [Fact]
    public void Zero_blocks_have_zero_scale_and_dequantize_to_zero()
    {
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.Q4_0 })
        {
            var bytes = new byte[GgmlQuants.BytesPerBlock(type)];
            GgmlQuants.Quantize(type, new float[32], bytes);
            var back = new float[32];
            GgmlQuants.Dequantize(type, bytes, back);
            Assert.All(back, v => Assert.Equal(0f, v));
        }
    }

    [Fact]
    public void Round_trip_error_is_within_half_a_step()
    {
        var random = new Random(3);
        var x = Enumerable.Range(0, 32 * 64).Select(_ => (float)(random.NextDouble() * 2 - 1) * (float)Math.Exp(random.Next(-6, 3))).ToArray();
        foreach (var type in new[] { GgmlType.Q8_0, GgmlType.Q4_0 })
        {
            var bytes = new byte[GgmlQuants.ByteSize(type, x.Length)];
            GgmlQuants.Quantize(type, x, bytes);
            var back = new float[x.Length];
            GgmlQuants.Dequantize(type, bytes, back);
            for (int b = 0; b < x.Length / 32; b++)
            {
                float d = Math.Abs((float)BinaryPrimitives.ReadHalfLittleEndian(bytes.AsSpan(b * GgmlQuants.BytesPerBlock(type))));
                // Half a step, plus the scale's fp16 rounding (2^-11 relative) times the largest code; Q4_0's top code
                // is clamped at 15, so the extreme of the other sign may be off by a full step.
                float bound = type == GgmlType.Q8_0 ? (0.5f + 127f / 2048f) * d : (1f + 8f / 2048f) * d;
                bound = bound * 1.001f + 1e-7f;
                for (int j = 0; j < 32; j++)
                    Assert.True(Math.Abs(back[b * 32 + j] - x[b * 32 + j]) <= bound, $"{type} block {b} weight {j}: {x[b * 32 + j]} → {back[b * 32 + j]} (d {d})");
            }
        }
    }
}
