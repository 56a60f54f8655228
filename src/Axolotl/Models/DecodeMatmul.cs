using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

/// <summary>
/// y = x Wᵀ (+ b) for the few-row products of decoding, where a bf16 weight matrix is read once per token and the
/// speed is the memory bandwidth reached: oneDNN's bf16 path reads weights at ~15 GB/s here at one row (a quarter of
/// what a copy reaches; README "Speed"). This kernel streams each weight row once for all input rows, widening bf16 to
/// fp32 with two bit operations, accumulating in fp32 and rounding once, as torch's bf16 matmul does (sums may differ
/// in order: last-bit differences). CPU, no autograd (generation runs under no_grad), bf16 input and weight, at most
/// <see cref="MaxRows"/> rows, in-features a multiple of 16; anything else keeps <c>F.linear</c>.
/// AXOLOTL_DECODE_MATMUL=0 turns it off.
/// </summary>
internal static unsafe class DecodeMatmul
{
    public const int MaxRows = 4;
    internal static readonly bool Enabled = Environment.GetEnvironmentVariable("AXOLOTL_DECODE_MATMUL")?.Trim() != "0";

    /// <summary>Keeps F.linear on this thread (tests compare the two paths).</summary>
    [ThreadStatic] internal static bool OffOnThisThread;

    /// <summary>Weight rows a work item takes: enough that each thread's share is long runs of sequential reads.</summary>
    const long RowsPerChunk = 64;

    /// <summary>F.linear, through this kernel where it <see cref="Applies"/>.</summary>
    public static Tensor LinearOrTorch(Tensor x, Tensor weight, Tensor? bias) =>
        Applies(x, weight, bias) ? Linear(x, weight, bias) : F.linear(x, weight, bias);

    public static bool Applies(Tensor x, Tensor weight, Tensor? bias) =>
        Enabled && !OffOnThisThread && !is_grad_enabled()
        && x.device_type == DeviceType.CPU && weight.device_type == DeviceType.CPU
        && x.dtype == ScalarType.BFloat16 && weight.dtype == ScalarType.BFloat16
        && (bias is null || bias.dtype == ScalarType.BFloat16 && bias.is_contiguous())
        && weight.dim() == 2 && weight.is_contiguous() && x.shape[^1] == weight.shape[1] && weight.shape[1] % 16 == 0
        && x.numel() > 0 && x.numel() / x.shape[^1] <= MaxRows;

    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias)
    {
        long k = weight.shape[1], n = weight.shape[0], rows = x.numel() / k;
        var (y, xs) = OutputAndRows(x, n, ScalarType.BFloat16);
        fixed (byte* wStart = weight.bytes) fixed (float* xsStart = xs) fixed (byte* yStart = y.bytes)
        fixed (byte* bStart = bias is null ? default : bias.bytes)
        {
            nint wAt = (nint)wStart, xAt = (nint)xsStart, yAt = (nint)yStart, bAt = (nint)bStart;
            long chunks = (n + RowsPerChunk - 1) / RowsPerChunk;
            CpuKernels.ForChunks(chunks, 1, (first, last) =>
            {
                for (long c = first; c < last; c++)
                {
                    long from = c * RowsPerChunk, to = Math.Min(n, from + RowsPerChunk);
                    Rows((ushort*)wAt, (float*)xAt, (ushort*)yAt, (ushort*)bAt, from, to, n, k, rows);
                }
            });
        }
        return y;
    }

    /// <summary>
    /// A decode kernel's output, x's shape with <paramref name="n"/> last, of <paramref name="type"/> on x's device, and
    /// x's rows as <see cref="EvenOddRows"/> lays them out.
    /// </summary>
    internal static (Tensor Output, float[] Rows) OutputAndRows(Tensor x, long n, ScalarType type)
    {
        using var input = x.contiguous();
        var shape = x.shape.ToArray();
        shape[^1] = n;
        return (empty(shape, type, device: x.device), EvenOddRows(input));
    }

    /// <summary>
    /// The input rows (contiguous bf16 or fp32, a multiple of 16 elements) in fp32, each 16-element group reordered to its
    /// 8 even then 8 odd elements: a 32-bit load of bf16 weights (or a byte of NF4 codes) holds one even and one odd
    /// element, so both multiply without shuffling.
    /// </summary>
    static float[] EvenOddRows(Tensor input)
    {
        long count = input.numel();
        var xs = new float[count];
        bool bf16 = input.dtype == ScalarType.BFloat16;
        fixed (byte* xStart = input.bytes) fixed (float* xsStart = xs)
        {
            for (long i = 0; i < count; i += 16)
                for (int j = 0; j < 8; j++)
                {
                    xsStart[i + j] = bf16 ? BitConverter.UInt32BitsToSingle((uint)((ushort*)xStart)[i + 2 * j] << 16) : ((float*)xStart)[i + 2 * j];
                    xsStart[i + 8 + j] = bf16 ? BitConverter.UInt32BitsToSingle((uint)((ushort*)xStart)[i + 2 * j + 1] << 16) : ((float*)xStart)[i + 2 * j + 1];
                }
        }
        return xs;
    }

    /// <summary>Output columns [from, to) of every input row, four weight rows at a time.</summary>
    // Optimized from the first call: tier-0 code does not turn Vector256 into instructions, and decoding a handful of
    // tokens never calls these often enough for tiering to replace it (measured: 15x slower at the 58M shape).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Rows(ushort* w, float* xs, ushort* y, ushort* bias, long from, long to, long n, long k, long rows)
    {
        long j = from;
        for (; j + 4 <= to; j += 4)
            for (long r = 0; r < rows; r++)
            {
                var (a, b, c, d) = Dot4(w + j * k, k, xs + r * k);
                Write(y, bias, r * n + j, j, a);
                Write(y, bias, r * n + j + 1, j + 1, b);
                Write(y, bias, r * n + j + 2, j + 2, c);
                Write(y, bias, r * n + j + 3, j + 3, d);
            }
        for (; j < to; j++)
            for (long r = 0; r < rows; r++)
                Write(y, bias, r * n + j, j, Dot1(w + j * k, k, xs + r * k));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Write(ushort* y, ushort* bias, long at, long column, float value)
    {
        // torch adds the bias to the fp32 accumulator before its single rounding as well.
        if (bias != null) value += BitConverter.UInt32BitsToSingle((uint)bias[column] << 16);
        y[at] = (ushort)(CpuKernels.RoundBits(value) >> 16);
    }

    static readonly Vector256<uint> HighHalf = Vector256.Create(0xFFFF0000u);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector256<float> Even, Vector256<float> Odd) Widen(ushort* at)
    {
        var v = Vector256.Load((uint*)at);
        return ((v << 16).AsSingle(), (v & HighHalf).AsSingle());
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static (float, float, float, float) Dot4(ushort* w, long k, float* xs)
    {
        Vector256<float> a = default, b = default, c = default, d = default;
        ushort* w1 = w + k, w2 = w + 2 * k, w3 = w + 3 * k;
        for (long i = 0; i < k; i += 16)
        {
            var xe = Vector256.Load(xs + i);
            var xo = Vector256.Load(xs + i + 8);
            var (e0, o0) = Widen(w + i);
            var (e1, o1) = Widen(w1 + i);
            var (e2, o2) = Widen(w2 + i);
            var (e3, o3) = Widen(w3 + i);
            a = Vector256.FusedMultiplyAdd(o0, xo, Vector256.FusedMultiplyAdd(e0, xe, a));
            b = Vector256.FusedMultiplyAdd(o1, xo, Vector256.FusedMultiplyAdd(e1, xe, b));
            c = Vector256.FusedMultiplyAdd(o2, xo, Vector256.FusedMultiplyAdd(e2, xe, c));
            d = Vector256.FusedMultiplyAdd(o3, xo, Vector256.FusedMultiplyAdd(e3, xe, d));
        }
        return (Vector256.Sum(a), Vector256.Sum(b), Vector256.Sum(c), Vector256.Sum(d));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Dot1(ushort* w, long k, float* xs)
    {
        Vector256<float> a = default;
        for (long i = 0; i < k; i += 16)
        {
            var (e, o) = Widen(w + i);
            a = Vector256.FusedMultiplyAdd(o, Vector256.Load(xs + i + 8), Vector256.FusedMultiplyAdd(e, Vector256.Load(xs + i), a));
        }
        return Vector256.Sum(a);
    }
}
