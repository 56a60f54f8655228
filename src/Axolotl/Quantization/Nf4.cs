using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Quantization;

/// <summary>
/// A weight matrix in bitsandbytes' 4-bit NormalFloat layout (quantize_4bit with quant_type "nf4"), reproduced from
/// its CUDA kernels (kQuantizeBlockwise / kDequantizeBlockwise) so the codes and scales equal what bnb stores:
/// <list type="bullet">
/// <item>The weight is read row-major as one flat vector and cut into blocks of <see cref="BlockSize"/> (64) values;
/// a last partial block is quantized as if padded with zeros.</item>
/// <item>absmax[b] = max |w| over block b, in fp32 (the weight as loaded, e.g. bf16, widened exactly). Each value is
/// scaled by multiplying with the fp32 reciprocal 1/absmax (not divided), then mapped to a 4-bit code by bnb's decision
/// tree: the code is the number of <see cref="Thresholds"/> the scaled value is strictly greater than. So a value
/// exactly on a midpoint takes the lower code, and NaN (a block of zeros: 0 × 1/0) falls through to code 0.</item>
/// <item>Two codes per byte, the even-indexed element (0, 2, …) in the high nibble, the odd one in the low nibble:
/// byte k = code[2k] &lt;&lt; 4 | code[2k+1].</item>
/// <item>Dequantization: <see cref="Codebook"/>[code] × absmax[block] in fp32, then rounded once to the weight's
/// original dtype (bnb's QuantState.dtype); Linear4bit casts that to the compute dtype.</item>
/// <item>Double quantization (bnb_4bit_use_double_quant, bnb's compress_statistics): offset = mean(absmax), and
/// absmax − offset is stored as 8-bit codes of <see cref="Blockwise8Bit"/> (the signed dynamic map) in blocks of 256,
/// with one fp32 absmax per 256 blocks; absmax is recovered as code[q] × absmax2 + offset before use.</item>
/// </list>
/// One difference from CUDA remains: bnb compiles with --use_fast_math, so its 1/absmax may be off by one ulp of
/// the IEEE reciprocal used here (bnb's CPU backend also uses the IEEE one); codes can then differ at exact midpoints.
/// </summary>
internal sealed class Nf4Weight : IDisposable
{
    public const int BlockSize = 64;
    public const int StatisticsBlockSize = 256;

    /// <summary>bnb's NF4 values (nf4_dequantization_lut), code 0b0000 to 0b1111.</summary>
    public static readonly float[] Codebook =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    /// <summary>The pivots of bnb's dQuantizeNF4 decision tree, in ascending order (midpoints of adjacent codes, as fp32 literals).</summary>
    public static readonly float[] Thresholds =
    [
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
        -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
        0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
        0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f,
    ];

    /// <summary>Packed codes, uint8 [ceil(n / 2)].</summary>
    public Tensor Packed { get; }
    /// <summary>fp32 [blocks] when not double-quantized; else null.</summary>
    public Tensor? Absmax { get; }
    /// <summary>Double quantization: the 8-bit codes of absmax − offset, uint8 [blocks].</summary>
    public Blockwise8Bit? NestedAbsmax { get; }
    public float Offset { get; }
    public long[] Shape { get; }
    /// <summary>The dtype the weight had when quantized; dequantization rounds to it.</summary>
    public ScalarType DType { get; }
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);

    Nf4Weight(Tensor packed, Tensor? absmax, Blockwise8Bit? nested, float offset, long[] shape, ScalarType dtype)
    {
        Packed = packed; Absmax = absmax; NestedAbsmax = nested; Offset = offset; Shape = shape; DType = dtype;
    }

    public static Nf4Weight Quantize(Tensor weight, bool doubleQuant)
    {
        using var scope = NewDisposeScope();
        Tensor packed, absmax;
        if (weight.device_type == DeviceType.CPU && weight.is_contiguous() && weight.dtype is ScalarType.BFloat16 or ScalarType.Float32)
            (packed, absmax) = QuantizeOnHost(weight);
        else
        {
            var (codes, blockAbsmax) = Codes(weight);
            packed = codes[TensorIndex.Slice(0, null, 2)].bitwise_left_shift(tensor(4L, device: codes.device)).bitwise_or(codes[TensorIndex.Slice(1, null, 2)]);
            absmax = blockAbsmax;
        }
        Tensor? plainAbsmax = null;
        Blockwise8Bit? nested = null;
        float offset = 0;
        if (doubleQuant)
        {
            var mean = absmax.mean();
            offset = mean.item<float>();
            nested = Blockwise8Bit.Quantize(absmax - mean, StatisticsBlockSize);
            nested.Codes.MoveToOuterDisposeScope();
            nested.Absmax.MoveToOuterDisposeScope();
        }
        else plainAbsmax = absmax.MoveToOuterDisposeScope();
        return new Nf4Weight(packed.contiguous().MoveToOuterDisposeScope(), plainAbsmax, nested, offset, weight.shape, weight.dtype);
    }

    /// <summary>
    /// <see cref="Codes"/> packed, computed block by block straight from a CPU weight's memory, in parallel over blocks:
    /// the tensor path's fp32 copy, int64 bucket indices and masks cost ~30 bytes of temporaries per weight element,
    /// more than the bf16 model itself at real widths, and page faults that made quantizing slower than reading.
    /// </summary>
    static unsafe (Tensor Packed, Tensor Absmax) QuantizeOnHost(Tensor weight)
    {
        long n = weight.numel(), blocks = (n + BlockSize - 1) / BlockSize, kept = n + (n & 1);
        var packed = empty(kept / 2, dtype: ScalarType.Byte, device: weight.device);
        var absmax = empty(blocks, dtype: ScalarType.Float32, device: weight.device);
        bool bf16 = weight.dtype == ScalarType.BFloat16;
        bool vector = Avx2.IsSupported && !ScalarOnThisThread;
        fixed (byte* sourceStart = weight.bytes)
        fixed (byte* packedStart = packed.bytes)
        fixed (byte* absmaxStart = absmax.bytes)
        {
            nint sourceAt = (nint)sourceStart, packedAt = (nint)packedStart, absmaxAt = (nint)absmaxStart;
            const long blocksPerChunk = 2048;
            Models.CpuKernels.ForEach((blocks + blocksPerChunk - 1) / blocksPerChunk, chunk =>
            {
                float Value(long i) => i >= n ? 0f
                    : bf16 ? BitConverter.UInt32BitsToSingle((uint)((ushort*)sourceAt)[i] << 16) : ((float*)sourceAt)[i];
                var output = (byte*)packedAt;
                var scales = (float*)absmaxAt;
                long end = Math.Min(blocks, (chunk + 1) * blocksPerChunk);
                for (long b = chunk * blocksPerChunk; b < end; b++)
                {
                    long first = b * BlockSize, last = Math.Min(kept, first + BlockSize);
                    if (vector && first + BlockSize <= n && QuantizeBlock((byte*)sourceAt + first * (bf16 ? 2 : 4), bf16, scales + b, output + (first >> 1)))
                        continue;
                    float max = 0;
                    for (long i = first; i < Math.Min(n, first + BlockSize); i++) max = MathF.Max(max, MathF.Abs(Value(i)));
                    scales[b] = max;
                    float reciprocal = 1.0f / max;
                    for (long i = first; i < last; i += 2)
                        output[i >> 1] = (byte)(Code(Value(i) * reciprocal) << 4 | Code(Value(i + 1) * reciprocal));
                }
            });
        }
        return (packed, absmax);
    }

    static readonly Vector256<float>[] ThresholdVectors = [.. Thresholds.Select(Vector256.Create)];

    /// <summary>
    /// One full block quantized with AVX2, as the scalar loop does it: absmax over the 64 values, the fp32 reciprocal, and
    /// each code as the count of thresholds the scaled value exceeds (a NaN exceeds none), two codes a byte. False,
    /// writing nothing, when the block holds a NaN (whose absmax the scalar loop defines).
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static unsafe bool QuantizeBlock(byte* source, bool bf16, float* absmax, byte* output)
    {
        var values = stackalloc Vector256<float>[BlockSize / 8];
        var signBit = Vector256.Create(-0f);
        var max = Vector256<float>.Zero;
        var unordered = Vector256<float>.Zero;
        for (int k = 0; k < BlockSize / 8; k++)
        {
            var v = bf16 ? Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)source + k * 8), 16).AsSingle() : Avx.LoadVector256((float*)source + k * 8);
            values[k] = v;
            unordered = Avx.Or(unordered, Avx.CompareUnordered(v, v));
            max = Avx.Max(max, Avx.AndNot(signBit, v));
        }
        if (Avx.MoveMask(unordered) != 0) return false;
        float blockMax = 0;
        for (int k = 0; k < 8; k++) blockMax = MathF.Max(blockMax, max.GetElement(k));
        *absmax = blockMax;
        var reciprocal = Vector256.Create(1.0f / blockMax);
        var pairs = stackalloc long[4];
        for (int k = 0; k < BlockSize / 8; k++)
        {
            var scaled = Avx.Multiply(values[k], reciprocal);
            var code = Vector256<int>.Zero;
            foreach (var threshold in ThresholdVectors) code = Avx2.Subtract(code, Avx.CompareGreaterThan(scaled, threshold).AsInt32());
            // Each 64-bit lane holds an (even, odd) pair of codes: even << 4 | odd in its low byte.
            var packed = Avx2.Or(Avx2.ShiftLeftLogical(code.AsInt64(), 4), Avx2.ShiftRightLogical(code.AsInt64(), 32));
            Avx.Store(pairs, packed);
            for (int p = 0; p < 4; p++) output[k * 4 + p] = (byte)pairs[p];
        }
        return true;
    }

    /// <summary>bnb's decision tree: how many thresholds the scaled value exceeds (NaN exceeds none: code 0).</summary>
    static int Code(float scaled)
    {
        int code = 0;
        while (code < Thresholds.Length && scaled > Thresholds[code]) code++;
        return code;
    }

    /// <summary>The 4-bit codes (uint8 [n rounded up to even]) and fp32 absmax per block of a weight, as bnb computes them.</summary>
    internal static (Tensor Codes, Tensor Absmax) Codes(Tensor weight)
    {
        var flat = weight.detach().to(ScalarType.Float32).reshape(-1);
        long n = flat.shape[0];
        long blocks = (n + BlockSize - 1) / BlockSize;
        if (blocks * BlockSize != n) flat = nn.functional.pad(flat, [0, blocks * BlockSize - n]);
        var grid = flat.view(blocks, BlockSize);
        var absmax = grid.abs().amax([1]);
        var scaled = grid * absmax.reciprocal().unsqueeze(1);
        var codes = bucketize(scaled, tensor(Thresholds, device: scaled.device), right: false);
        codes = where(scaled.isnan(), zeros_like(codes), codes).reshape(-1);
        long kept = n + (n & 1);
        return (codes.narrow(0, 0, kept).to(ScalarType.Byte), absmax);
    }

    /// <summary>fp32 absmax per block, undoing double quantization when present.</summary>
    public Tensor BlockAbsmax() =>
        Absmax is { } plain ? plain.alias() : NestedAbsmax!.Dequantize() + Offset;

    /// <summary>The weight in its original dtype (or <paramref name="type"/>, via the original dtype, as bnb does).</summary>
    public Tensor Dequantize(ScalarType? type = null)
    {
        using var scope = NewDisposeScope();
        // Shift and mask as tensors on the codes' device (a bare number would become one on the default device).
        var high = Packed.bitwise_right_shift(tensor(4L, device: Packed.device));
        var low = Packed.bitwise_and(tensor(0x0FL, device: Packed.device));
        var codes = stack([high, low], 1).reshape(-1).narrow(0, 0, Count).to(ScalarType.Int64);
        var values = tensor(Codebook, device: codes.device).index_select(0, codes);
        var scale = BlockAbsmax().repeat_interleave(BlockSize).narrow(0, 0, Count);
        var result = (values * scale).to(DType).view(Shape);
        if (type is { } t && t != DType) result = result.to(t);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The same values as <see cref="Dequantize"/> written straight into <paramref name="destination"/> (contiguous, on
    /// the CPU, bf16 or fp32, <see cref="Count"/> elements), for a weight quantized from bf16 or fp32. Dequantize builds
    /// int64 codes, fp32 values and a repeated scale, 20 bytes of short-lived temporaries per weight element: at real
    /// widths each is its own fresh mmap, page-faulted in on every forward and backward. Here each block's 16 codebook
    /// values are scaled and rounded once (fp32 product, rounded to the stored dtype, then to the destination's) and the
    /// nibbles index them, in parallel over blocks; the only temporary is the absmax vector.
    /// </summary>
    public unsafe void DequantizeInto(Tensor destination)
    {
        if (!CanDequantizeInto(destination.dtype) || destination.device_type != DeviceType.CPU || !destination.is_contiguous() || destination.numel() != Count)
            throw new ArgumentException($"cannot dequantize a {DType} NF4 weight into a {destination.dtype} [{string.Join(", ", destination.shape)}] tensor on {destination.device}.");
        using var scope = NewDisposeScope();
        var absmax = BlockAbsmax().to(ScalarType.Float32).cpu().contiguous();
        var packed = Packed.cpu().contiguous();
        long count = Count, blocks = (count + BlockSize - 1) / BlockSize;
        bool storedBf16 = DType == ScalarType.BFloat16, outBf16 = destination.dtype == ScalarType.BFloat16;
        bool vector = Avx2.IsSupported && !ScalarOnThisThread;
        fixed (byte* packedStart = packed.bytes)
        fixed (byte* scaleStart = absmax.bytes)
        fixed (byte* outStart = destination.bytes)
        {
            nint codesAt = (nint)packedStart, scalesAt = (nint)scaleStart, outAt = (nint)outStart;
            const long blocksPerChunk = 2048;
            Models.CpuKernels.ForEach((blocks + blocksPerChunk - 1) / blocksPerChunk, chunk =>
            {
                var codes = (byte*)codesAt;
                var scales = (float*)scalesAt;
                Span<float> table = stackalloc float[16];
                long end = Math.Min(blocks, (chunk + 1) * blocksPerChunk);
                for (long b = chunk * blocksPerChunk; b < end; b++)
                {
                    float scale = scales[b];
                    long first = b * BlockSize, last = Math.Min(count, first + BlockSize);
                    if (outBf16 && vector && last - first == BlockSize && float.IsFinite(scale))
                    {
                        BlockToBf16(codes + (first >> 1), scale, (ushort*)outAt + first);
                        continue;
                    }
                    for (int c = 0; c < 16; c++)
                    {
                        float v = Codebook[c] * scale;
                        table[c] = storedBf16 ? Bf16Round(v) : v;
                    }
                    if (outBf16)
                    {
                        var output = (ushort*)outAt;
                        for (long i = first; i < last; i++)
                            output[i] = Bf16Bits(table[(codes[i >> 1] >> (i % 2 == 0 ? 4 : 0)) & 0x0F]);
                    }
                    else
                    {
                        var output = (float*)outAt;
                        for (long i = first; i < last; i++)
                            output[i] = table[(codes[i >> 1] >> (i % 2 == 0 ? 4 : 0)) & 0x0F];
                    }
                }
            });
        }
    }

    /// <summary>Takes the scalar loop on this thread's calls (tests compare it with the AVX2 one).</summary>
    [ThreadStatic] internal static bool ScalarOnThisThread;

    static readonly Vector256<float> CodebookLow = Vector256.Create<float>(Codebook.AsSpan(0, 8)), CodebookHigh = Vector256.Create<float>(Codebook.AsSpan(8, 8));

    /// <summary>
    /// One full block (64 values, 32 bytes of codes, a finite scale) to bf16 with AVX2: the block's 16 values
    /// (codebook × scale, rounded to bf16 as <see cref="Bf16Bits"/> rounds; a weight stored in bf16 was rounded the same
    /// way, and rounding twice is rounding once) split into a low-byte and a high-byte table, looked up 32 codes at a time
    /// by byte shuffles, then interleaved back into 16-bit values: the scalar loop's bits.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static unsafe void BlockToBf16(byte* codes, float scale, ushort* output)
    {
        var vScale = Vector256.Create(scale);
        var bits0 = Avx.Multiply(CodebookLow, vScale).AsUInt32();
        var bits1 = Avx.Multiply(CodebookHigh, vScale).AsUInt32();
        var bias = Vector256.Create(0x7FFFu);
        var one = Vector256.Create(1u);
        // Round to nearest even: + 0x7FFF + the kept part's lowest bit, then the top 16 bits.
        var rounded0 = Avx2.ShiftRightLogical(Avx2.Add(Avx2.Add(bits0, bias), Avx2.And(Avx2.ShiftRightLogical(bits0, 16), one)), 16);
        var rounded1 = Avx2.ShiftRightLogical(Avx2.Add(Avx2.Add(bits1, bias), Avx2.And(Avx2.ShiftRightLogical(bits1, 16), one)), 16);
        // 16 values in codebook order ([0-3, 8-11 | 4-7, 12-15] after packing, quadwords reordered), then per lane the
        // low bytes before the high ones, then each table's two halves side by side in both lanes.
        var values = Avx2.Permute4x64(Avx2.PackUnsignedSaturate(rounded0.AsInt32(), rounded1.AsInt32()).AsInt64(), 0b11_01_10_00).AsByte();
        var split = Avx2.Shuffle(values, Vector256.Create((byte)0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)).AsInt64();
        var lowTable = Avx2.Permute4x64(split, 0b10_00_10_00).AsByte();
        var highTable = Avx2.Permute4x64(split, 0b11_01_11_01).AsByte();
        var packed = Avx.LoadVector256(codes);
        var nibble = Vector256.Create((byte)0x0F);
        // The even element of each pair is the high nibble.
        var even = Avx2.And(Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte(), nibble);
        var odd = Avx2.And(packed, nibble);
        // Unpacking works within 128-bit lanes: lane 0 holds pairs 0-15, lane 1 pairs 16-31.
        var pairsLow = Avx2.UnpackLow(even, odd);   // elements 0-15 | 32-47
        var pairsHigh = Avx2.UnpackHigh(even, odd); // elements 16-31 | 48-63
        Store(Avx2.Permute2x128(pairsLow, pairsHigh, 0x20), output);       // elements 0-31
        Store(Avx2.Permute2x128(pairsLow, pairsHigh, 0x31), output + 32);  // elements 32-63

        void Store(Vector256<byte> inOrder, ushort* destination)
        {
            var lo = Avx2.Shuffle(lowTable, inOrder);
            var hi = Avx2.Shuffle(highTable, inOrder);
            var first = Avx2.UnpackLow(lo, hi);   // values 0-7 | 16-23
            var second = Avx2.UnpackHigh(lo, hi); // values 8-15 | 24-31
            Avx.Store((byte*)destination, Avx2.Permute2x128(first, second, 0x20));
            Avx.Store((byte*)(destination + 16), Avx2.Permute2x128(first, second, 0x31));
        }
    }

    /// <summary>Whether <see cref="DequantizeInto"/> serves this weight for a destination of <paramref name="type"/>.</summary>
    public bool CanDequantizeInto(ScalarType type) =>
        DType is ScalarType.BFloat16 or ScalarType.Float32 && type is ScalarType.BFloat16 or ScalarType.Float32;

    /// <summary>fp32 → bf16 bits, rounding to nearest even as torch's conversion does (NaN stays a quiet NaN).</summary>
    static ushort Bf16Bits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return 0x7FC0;
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    static float Bf16Round(float value) => BitConverter.UInt32BitsToSingle((uint)Bf16Bits(value) << 16);

    /// <summary>A copy on <paramref name="device"/>; this one is disposed.</summary>
    public Nf4Weight To(Device device)
    {
        var moved = new Nf4Weight(Packed.to(device).DetachFromDisposeScope(), Absmax?.to(device).DetachFromDisposeScope(),
            NestedAbsmax?.To(device), Offset, Shape, DType);
        Packed.Dispose();
        Absmax?.Dispose();
        return moved;
    }

    /// <summary>Bytes held by the stored tensors (codes and scales).</summary>
    public long Bytes => Packed.numel() + (Absmax?.numel() * 4 ?? 0) + (NestedAbsmax?.Bytes ?? 0) + 4;

    public void Dispose()
    {
        Packed.Dispose();
        Absmax?.Dispose();
        NestedAbsmax?.Dispose();
    }
}
