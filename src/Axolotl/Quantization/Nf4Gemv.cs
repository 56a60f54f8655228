using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Quantization;

/// <summary>
/// y = x Wᵀ (+ b) for decoding's few-row products with an NF4 weight, read in its 4-bit form: each block of 64 codes is
/// looked up in the codebook eight at a time (two AVX2 permutes and a blend), multiplied with the input in fp32 and
/// scaled by the block's absmax (double quantization decoded inline), so a token reads half a byte per weight instead
/// of dequantizing every weight to bf16 and reading it again. Before this a 1B-shaped QLoRA model decoded at ~0.5
/// tokens/s, all of it dequantization (README "Speed"). Each weight value is rounded to the stored dtype as bnb's
/// dequantization rounds it, so only the order of the fp32 sums differs from dequantizing first. CPU with AVX2, at most
/// <see cref="DecodeMatmul.MaxRows"/> rows, in-features a multiple of 64; anything else dequantizes.
/// </summary>
internal static unsafe class Nf4Gemv
{
    const int Block = Nf4Weight.BlockSize;
    const long RowsPerChunk = 64;

    public static bool Applies(Tensor x, Nf4Weight w, Tensor? bias) =>
        DecodeMatmul.Enabled && !DecodeMatmul.OffOnThisThread && Avx2.IsSupported && Fma.IsSupported
        && w.DType is ScalarType.BFloat16 or ScalarType.Float32 // the stored dtypes whose rounding the kernel repeats
        && x.device_type == DeviceType.CPU && w.Packed.device_type == DeviceType.CPU && w.Packed.is_contiguous()
        && (w.Absmax is null || w.Absmax.device_type == DeviceType.CPU && w.Absmax.is_contiguous())
        && (w.NestedAbsmax is null || w.NestedAbsmax.Codes.device_type == DeviceType.CPU && w.NestedAbsmax.Absmax.device_type == DeviceType.CPU)
        && (bias is null || bias.device_type == DeviceType.CPU)
        && x.dtype is ScalarType.BFloat16 or ScalarType.Float32 && (bias is null || bias.dtype == x.dtype && bias.is_contiguous())
        && w.Shape.Length == 2 && x.shape[^1] == w.Shape[1] && w.Shape[1] % Block == 0
        && x.numel() > 0 && x.numel() / x.shape[^1] <= DecodeMatmul.MaxRows;

    public static Tensor Linear(Tensor x, Nf4Weight w, Tensor? bias)
    {
        long k = w.Shape[1], n = w.Shape[0], rows = x.numel() / k;
        var (y, xs) = DecodeMatmul.OutputAndRows(x, n, x.dtype);
        bool outBf16 = x.dtype == ScalarType.BFloat16;
        var nested = w.NestedAbsmax;
        using var biasF = bias?.to(ScalarType.Float32).contiguous();
        fixed (byte* packed = w.Packed.bytes) fixed (float* xsStart = xs) fixed (byte* yStart = y.bytes)
        fixed (byte* plainAbsmax = w.Absmax is null ? default : w.Absmax.bytes)
        fixed (byte* nestedCodes = nested is null ? default : nested.Codes.bytes) fixed (byte* nestedAbsmax = nested is null ? default : nested.Absmax.bytes)
        fixed (float* map = Blockwise8Bit.DynamicMap) fixed (float* codebook = Nf4Weight.Codebook)
        fixed (byte* bStart = biasF is null ? default : biasF.bytes)
        {
            var job = new Job
            {
                Packed = packed, Xs = xsStart, Y = yStart, Plain = (float*)plainAbsmax, NestedCodes = nestedCodes, NestedAbsmax = (float*)nestedAbsmax,
                NestedBlock = nested?.BlockSize ?? 1, Offset = w.Offset, Map = map, Codebook = codebook, Bias = (float*)bStart,
                N = n, K = k, Rows = rows, OutBf16 = outBf16, StoredBf16 = w.DType == ScalarType.BFloat16,
            };
            long chunks = (n + RowsPerChunk - 1) / RowsPerChunk;
            CpuKernels.ForChunks(chunks, 1, (first, last) =>
            {
                for (long c = first; c < last; c++) RowsOf(job, c * RowsPerChunk, Math.Min(n, (c + 1) * RowsPerChunk));
            });
        }
        return y;
    }

    struct Job
    {
        public byte* Packed, NestedCodes, Y;
        public float* Xs, Plain, NestedAbsmax, Map, Codebook, Bias;
        public int NestedBlock;
        public float Offset;
        public long N, K, Rows;
        public bool OutBf16, StoredBf16;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Round(Vector256<float> v, bool bf16) => bf16 ? (CpuKernels.RoundBits(v) << 16).AsSingle() : v;

    /// <summary>
    /// Block <paramref name="b"/>'s 16 values, codebook × absmax rounded to the stored dtype, computed once and then
    /// looked up per code. The absmax as BlockAbsmax() gives it: plain fp32, or the nested 8-bit code × its absmax + offset.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector256<float> Low, Vector256<float> High) BlockValues(in Job j, long b, Vector256<float> codebookLow, Vector256<float> codebookHigh)
    {
        float scale = j.Plain != null ? j.Plain[b] : j.Map[j.NestedCodes[b]] * j.NestedAbsmax[b / j.NestedBlock] + j.Offset;
        var s = Vector256.Create(scale);
        return (Round(codebookLow * s, j.StoredBf16), Round(codebookHigh * s, j.StoredBf16));
    }

    /// <summary>
    /// One input row (decoding a token): four accumulators in registers, so the fused multiply-adds of consecutive code
    /// groups do not wait on each other (one accumulator in memory held the loop to its latency chain: ~5.7 tokens/s at
    /// the 1B shape).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void OneRowOf(Job j, long from, long to)
    {
        var low = Vector256.Load(j.Codebook);
        var high = Vector256.Load(j.Codebook + 8);
        var seven = Vector256.Create(7);
        var nibble = Vector256.Create(15);
        long blocksPerRow = j.K / Block;
        for (long row = from; row < to; row++)
        {
            Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0;
            for (long blk = 0; blk < blocksPerRow; blk++)
            {
                long b = row * blocksPerRow + blk;
                var (blockLow, blockHigh) = BlockValues(j, b, low, high);
                byte* codes = j.Packed + b * (Block / 2);
                float* x = j.Xs + blk * Block;
                for (int g = 0; g < Block / 16; g += 2)
                {
                    var v = Avx2.ConvertToVector256Int32(codes + g * 8);
                    var hi = Avx2.ShiftRightLogical(v, 4);
                    var lo = Avx2.And(v, nibble);
                    var w = Avx2.ConvertToVector256Int32(codes + g * 8 + 8);
                    var hi2 = Avx2.ShiftRightLogical(w, 4);
                    var lo2 = Avx2.And(w, nibble);
                    a0 = Fma.MultiplyAdd(Avx.BlendVariable(Avx2.PermuteVar8x32(blockLow, hi), Avx2.PermuteVar8x32(blockHigh, hi), Avx2.CompareGreaterThan(hi, seven).AsSingle()),
                        Vector256.Load(x + g * 16), a0);
                    a1 = Fma.MultiplyAdd(Avx.BlendVariable(Avx2.PermuteVar8x32(blockLow, lo), Avx2.PermuteVar8x32(blockHigh, lo), Avx2.CompareGreaterThan(lo, seven).AsSingle()),
                        Vector256.Load(x + g * 16 + 8), a1);
                    a2 = Fma.MultiplyAdd(Avx.BlendVariable(Avx2.PermuteVar8x32(blockLow, hi2), Avx2.PermuteVar8x32(blockHigh, hi2), Avx2.CompareGreaterThan(hi2, seven).AsSingle()),
                        Vector256.Load(x + g * 16 + 16), a2);
                    a3 = Fma.MultiplyAdd(Avx.BlendVariable(Avx2.PermuteVar8x32(blockLow, lo2), Avx2.PermuteVar8x32(blockHigh, lo2), Avx2.CompareGreaterThan(lo2, seven).AsSingle()),
                        Vector256.Load(x + g * 16 + 24), a3);
                }
            }
            float value = Vector256.Sum((a0 + a1) + (a2 + a3)) + (j.Bias != null ? j.Bias[row] : 0f);
            if (j.OutBf16) ((ushort*)j.Y)[row] = (ushort)(CpuKernels.RoundBits(value) >> 16);
            else ((float*)j.Y)[row] = value;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void RowsOf(Job j, long from, long to)
    {
        if (j.Rows == 1) { OneRowOf(j, from, to); return; }
        var low = Vector256.Load(j.Codebook);
        var high = Vector256.Load(j.Codebook + 8);
        var seven = Vector256.Create(7);
        var nibble = Vector256.Create(15);
        var acc = stackalloc Vector256<float>[DecodeMatmul.MaxRows];
        long blocksPerRow = j.K / Block;
        for (long row = from; row < to; row++)
        {
            for (int r = 0; r < j.Rows; r++) acc[r] = Vector256<float>.Zero;
            for (long blk = 0; blk < blocksPerRow; blk++)
            {
                long b = row * blocksPerRow + blk;
                var (blockLow, blockHigh) = BlockValues(j, b, low, high);
                byte* codes = j.Packed + b * (Block / 2);
                for (int g = 0; g < Block / 16; g++)
                {
                    // 8 bytes = 16 codes: the high nibble is the even element, the low nibble the odd one.
                    var v = Avx2.ConvertToVector256Int32(codes + g * 8);
                    var hi = Avx2.ShiftRightLogical(v, 4);
                    var lo = Avx2.And(v, nibble);
                    var even = Avx.BlendVariable(Avx2.PermuteVar8x32(blockLow, hi), Avx2.PermuteVar8x32(blockHigh, hi), Avx2.CompareGreaterThan(hi, seven).AsSingle());
                    var odd = Avx.BlendVariable(Avx2.PermuteVar8x32(blockLow, lo), Avx2.PermuteVar8x32(blockHigh, lo), Avx2.CompareGreaterThan(lo, seven).AsSingle());
                    long at = blk * Block + g * 16;
                    for (int r = 0; r < j.Rows; r++)
                    {
                        float* x = j.Xs + r * j.K + at;
                        acc[r] = Fma.MultiplyAdd(odd, Vector256.Load(x + 8), Fma.MultiplyAdd(even, Vector256.Load(x), acc[r]));
                    }
                }
            }
            for (int r = 0; r < j.Rows; r++)
            {
                float value = Vector256.Sum(acc[r]) + (j.Bias != null ? j.Bias[row] : 0f);
                long at = r * j.N + row;
                if (j.OutBf16) ((ushort*)j.Y)[at] = (ushort)(CpuKernels.RoundBits(value) >> 16);
                else ((float*)j.Y)[at] = value;
            }
        }
    }
}
