using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Quantization;

/// <summary>NF4 against bitsandbytes' rules (csrc/kernels.cu: dQuantizeNF4, kQuantizeBlockwise; functional.py), derived by hand.</summary>
public class Nf4Tests
{
    // bnb's NF4 code values (dDequantizeNF4 in csrc/kernels.cu, functional.py's get_4bit_type), its float literals.
    static readonly float[] BnbNf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    // The pivots of bnb's decision tree, dQuantizeNF4 in csrc/kernels.cu (bitsandbytes-foundation/bitsandbytes), as
    // its float literals, in code order: code i+1 is chosen when x > pivot i.
    static readonly float[] BnbPivots =
    [
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f, -0.23460740596055984f,
        -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f, 0.2035212516784668f,
        0.2920137718319893f, 0.3893125355243683f, 0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
    ];

    /// <summary>The test's own NF4 rule: bnb's tree walked as a scan, a value on a pivot going to the lower code (x &gt; pivot).</summary>
    static int NearestCode(float scaled)
    {
        int best = 0;
        for (int i = 1; i < 16; i++)
            if (scaled > BnbPivots[i - 1]) best = i;
        return best;
    }

    [Fact]
    public void Codebook_and_tree_pivots_are_bnbs()
    {
        Assert.Equal(BnbNf4, Nf4Weight.Codebook);
        Assert.Equal(BnbPivots, Nf4Weight.Thresholds);
        for (int i = 0; i < 15; i++)
        {
            // bnb's pivots are the midpoints of neighbouring codes (to fp32 rounding of its printed literals).
            double mid = ((double)BnbNf4[i] + BnbNf4[i + 1]) / 2;
            Assert.True(Math.Abs(BnbPivots[i] - mid) < 1e-7, $"pivot {i}: {BnbPivots[i]} vs {mid}");
        }
    }

    [Fact]
    public void Known_block_gives_bnbs_codes_absmax_and_nibble_order()
    {
        using var scope = NewDisposeScope();
        // absmax 2 makes 1/absmax = 0.5 exact, so each scaled value is exactly half the input.
        var values = new float[64];
        values[0] = 2.0f;    // +absmax → code 15, high nibble of byte 0
        values[1] = -2.0f;   // −absmax → code 0, low nibble of byte 0
        values[2] = 0f;      // → code 7
        values[3] = 2 * BnbNf4[9];   // exactly a code value → that code
        values[4] = 2 * BnbPivots[7];                   // exactly on the 0/+ pivot → the lower code (7)
        values[5] = 2 * MathF.BitIncrement(BnbPivots[7]); // one ulp above → the upper code (8)
        values[6] = 2 * BnbPivots[0];                   // on the lowest pivot → code 0
        values[7] = -0.1f;
        var rng = new Random(7);
        for (int i = 8; i < 64; i++) values[i] = (float)(rng.NextDouble() * 3.8 - 1.9);
        var weight = tensor(values).reshape(2, 32);
        using var q = Nf4Weight.Quantize(weight, doubleQuant: false);

        var expected = values.Select(v => NearestCode(v * 0.5f)).ToArray();
        Assert.Equal(new[] { 15, 0, 7, 9, 7, 8, 0 }, expected.Take(7).ToArray()); // the hand-derived ones
        var bytes = q.Packed.data<byte>().ToArray();
        Assert.Equal(32, bytes.Length);
        Assert.Equal(0xF0, bytes[0]);
        for (int k = 0; k < 32; k++) Assert.Equal((byte)(expected[2 * k] << 4 | expected[2 * k + 1]), bytes[k]);
        Assert.Equal(new[] { 2.0f }, q.Absmax!.data<float>().ToArray());

        var back = q.Dequantize().data<float>().ToArray();
        for (int i = 0; i < 64; i++) Assert.Equal(BnbNf4[expected[i]] * 2.0f, back[i]);
    }

    [Fact]
    public void Blocks_are_64_consecutive_row_major_values_and_a_zero_block_falls_to_code_0()
    {
        using var scope = NewDisposeScope();
        var w = zeros(3, 64);
        w[0, 5] = tensor(-3.0f);      // block 0: absmax 3
        w[2, 63] = tensor(0.5f);      // block 2: absmax 0.5; block 1 stays all zeros
        using var q = Nf4Weight.Quantize(w, doubleQuant: false);
        Assert.Equal(new[] { 3.0f, 0f, 0.5f }, q.Absmax!.data<float>().ToArray());
        var bytes = q.Packed.data<byte>().ToArray();
        Assert.Equal(0x77, bytes[0]);          // zeros in a non-zero block → code 7 both nibbles
        Assert.Equal(0x70, bytes[2]);          // element 5 (odd) → low nibble, code 0
        Assert.All(bytes.Skip(32).Take(32), b => Assert.Equal(0x00, b)); // 0 × (1/0) = NaN → the tree's last branch, code 0
        Assert.Equal(0x7F, bytes[95]);         // element 63 of block 2: absmax → code 15
        var back = q.Dequantize();
        Assert.Equal(0f, back[1].abs().max().item<float>());
        Assert.Equal(-3.0f, back[0, 5].item<float>());
    }

    [Fact]
    public void Round_trip_of_a_random_bf16_matrix_is_within_half_a_code_gap_and_idempotent()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(3);
        var w = randn(96, 80, generator: gen).to(ScalarType.BFloat16) * 0.02;
        using var q = Nf4Weight.Quantize(w, doubleQuant: false);
        Assert.Equal(96 * 80 / 2, q.Packed.numel());
        Assert.Equal(96 * 80 / 64, q.Absmax!.numel());
        var back = q.Dequantize();
        Assert.Equal(ScalarType.BFloat16, back.dtype);
        Assert.Equal(new long[] { 96, 80 }, back.shape);
        var err = (back.to(ScalarType.Float32) - w.to(ScalarType.Float32)).abs().reshape(-1, 64);
        var absmax = w.to(ScalarType.Float32).abs().reshape(-1, 64).amax([1], keepdim: true);
        float maxGap = Enumerable.Range(0, 15).Max(i => BnbNf4[i + 1] - BnbNf4[i]);
        // half the widest gap, plus bf16 rounding of the result
        Assert.True((err - absmax * (maxGap / 2 + 0.01f)).max().item<float>() <= 0);
        using var again = Nf4Weight.Quantize(back, doubleQuant: false);
        Assert.True(again.Packed.eq(q.Packed).all().item<bool>());
        Assert.True(again.Dequantize().eq(back).all().item<bool>());
    }

    /// <summary>The test's own scalar NF4 quantizer, written from bnb's kernel: absmax per block of 64, x · (1/absmax) in fp32, the tree.</summary>
    static (byte[] Packed, float[] Absmax) ScalarNf4(float[] w)
    {
        int blocks = (w.Length + 63) / 64;
        var absmax = new float[blocks];
        var codes = new int[w.Length + (w.Length & 1)];
        for (int b = 0; b < blocks; b++)
        {
            float max = 0;
            for (int i = b * 64; i < Math.Min(w.Length, b * 64 + 64); i++) max = Math.Max(max, Math.Abs(w[i]));
            absmax[b] = max;
            float reciprocal = 1.0f / max;
            for (int i = b * 64; i < Math.Min(w.Length, b * 64 + 64); i++) codes[i] = NearestCode(w[i] * reciprocal);
        }
        var packed = new byte[codes.Length / 2];
        for (int k = 0; k < packed.Length; k++) packed[k] = (byte)(codes[2 * k] << 4 | codes[2 * k + 1]);
        return (packed, absmax);
    }

    [Theory]
    [InlineData("model.layers.0.self_attn.q_proj.weight", ScalarType.Float32)]
    [InlineData("model.layers.1.mlp.down_proj.weight", ScalarType.BFloat16)]
    [InlineData("lm_head.weight", ScalarType.BFloat16)]
    public void Real_weights_quantize_as_a_scalar_reading_of_bnbs_kernel(string key, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var file = Axolotl.IO.SafetensorsFile.Open(TestSetup.Data("reference", "models", "tiny-llama", "model.safetensors"));
        var w = file.Read(key).to(dtype);
        var (packed, absmax) = ScalarNf4(w.to(ScalarType.Float32).reshape(-1).data<float>().ToArray());
        using var q = Nf4Weight.Quantize(w, doubleQuant: false);
        Assert.Equal(packed, q.Packed.data<byte>().ToArray());
        Assert.Equal(absmax, q.Absmax!.data<float>().ToArray());
        // Dequantized: code value × absmax in fp32, rounded once to the weight's dtype.
        var back = q.Dequantize().to(ScalarType.Float32).reshape(-1).data<float>().ToArray();
        var expected = tensor(Enumerable.Range(0, back.Length)
            .Select(i => BnbNf4[(packed[i / 2] >> (i % 2 == 0 ? 4 : 0)) & 0xF] * absmax[i / 64]).ToArray()).to(dtype).to(ScalarType.Float32).data<float>().ToArray();
        Assert.Equal(expected, back);
    }

    [Fact]
    public void Dynamic_map_is_create_dynamic_map_signed()
    {
        var map = Blockwise8Bit.DynamicMap;
        Assert.Equal(256, map.Length);
        Assert.True(map.Zip(map.Skip(1)).All(p => p.First <= p.Second));
        Assert.Equal(0f, map[127]);
        Assert.Equal(1f, map[255]);
        // exponent 0: one fraction item, the mean of linspace(0.1, 1, 2) = 0.55, scaled by 1e-6
        Assert.Equal(0.55f * (float)1e-6, map[128]);
        Assert.Equal(-map[128], map[126]);
        // exponent 6: the last mean of linspace(0.1, 1, 65) is (0.9859375 + 1) / 2
        Assert.Equal(0.99296875f, map[254], 6);
        Assert.Equal(-map[254], map[0]);
    }

    [Fact]
    public void Dynamic_quantization_picks_the_nearest_code_as_bnbs_binary_search()
    {
        var map = Blockwise8Bit.DynamicMap;
        foreach (int i in new[] { 0, 1, 50, 126, 127, 128, 200, 254, 255 })
            Assert.Equal(i, Blockwise8Bit.Nearest(map, map[i]));
        Assert.Equal(255, Blockwise8Bit.Nearest(map, 1.0f));
        Assert.Equal(0, Blockwise8Bit.Nearest(map, -1.0f));
        var rng = new Random(1);
        for (int t = 0; t < 2000; t++)
        {
            float x = (float)(rng.NextDouble() * 2 - 1);
            int got = Blockwise8Bit.Nearest(map, x);
            float best = map.Min(c => MathF.Abs(c - x));
            Assert.True(MathF.Abs(map[got] - x) <= best * (1 + 1e-6f), $"x={x}: code {got} ({map[got]}) is not nearest");
        }
    }

    [Fact]
    public void Double_quantization_stores_8bit_absmax_around_their_mean_and_recovers_them_closely()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(5);
        var w = randn(128, 320, generator: gen).to(ScalarType.BFloat16);
        using var plain = Nf4Weight.Quantize(w, doubleQuant: false);
        using var nested = Nf4Weight.Quantize(w, doubleQuant: true);
        Assert.Null(nested.Absmax);
        Assert.True(nested.Packed.eq(plain.Packed).all().item<bool>()); // the codes do not depend on how absmax is stored
        var absmax = plain.Absmax!;
        Assert.Equal(absmax.mean().item<float>(), nested.Offset);
        Assert.Equal(640, nested.NestedAbsmax!.Codes.numel());
        Assert.Equal(3, nested.NestedAbsmax.Absmax.numel()); // 640 blocks → 3 blocks of 256
        // blocks of 256: each second-level absmax is the max |absmax − mean| of its block
        var centered = absmax - nested.Offset;
        Assert.Equal(centered.narrow(0, 0, 256).abs().max().item<float>(), nested.NestedAbsmax.Absmax[0].item<float>());
        var recovered = nested.BlockAbsmax();
        float spread = centered.abs().max().item<float>();
        Assert.True((recovered - absmax).abs().max().item<float>() < spread * 0.02f);
        // Each 8-bit code, decoded by hand, equals the recovered value.
        var code = nested.NestedAbsmax.Codes[300].item<byte>();
        Assert.Equal(Blockwise8Bit.DynamicMap[code] * nested.NestedAbsmax.Absmax[1].item<float>() + nested.Offset, recovered[300].item<float>());
        Assert.True(nested.Bytes < plain.Bytes);
    }
}
