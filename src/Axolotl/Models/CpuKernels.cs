using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// What the fused CPU kernels (<see cref="FusedRmsNorm"/>, <see cref="FusedSwiGlu"/>) share: the switch, the split of
/// work over torch's threads, and bf16 ⇄ fp32 conversion of rows (round to nearest even, as torch converts).
/// </summary>
static unsafe class CpuKernels
{
    static readonly string? Setting = Environment.GetEnvironmentVariable("AXOLOTL_CPU_KERNELS")?.Trim().ToLowerInvariant();

    /// <summary>
    /// Whether the fused CPU kernel <paramref name="name"/> (rmsnorm, swiglu, rope) is used where it applies, from the
    /// environment AXOLOTL_CPU_KERNELS: 1 all of them, unset or 0 none, or a comma-separated list. Off by default because
    /// the side-by-side benchmark on a quiet machine showed no step-level gain (58M LoRA 1654-1661 tok/s without, 1623-1625
    /// with; full fine-tune 1098 without, 993 with: README "Speed"); kept, tested against the compositions, as the base for
    /// fusing the residual add and the LoRA path, where the barriers they remove would add up.
    /// </summary>
    public static bool Uses(string name) => Setting switch
    {
        "1" => true,
        null or "" or "0" => false,
        var list => list.Split(',').Any(k => k.Trim() == name),
    };

    /// <summary>Chunks of work, one per torch thread, each at least <paramref name="minimum"/> items so small inputs stay on one thread.</summary>
    public static int ChunkCount(long items, long minimum) => (int)Math.Max(1, Math.Min(get_num_threads(), items / minimum));

    /// <summary>
    /// body(first, last) over [0, items) split in <see cref="ChunkCount"/> chunks run in parallel, on torch's own
    /// OpenMP threads where libtorch uses libgomp (<see cref="OpenMpPool"/>), else on .NET's pool.
    /// </summary>
    public static void ForChunks(long items, long minimum, Action<long, long> body)
    {
        int chunks = ChunkCount(items, minimum);
        if (chunks == 1) { body(0, items); return; }
        if (OpenMpPool.TryRun(chunks, c => body(items * c / chunks, items * (c + 1) / chunks))) return;
        Parallel.For(0, chunks, c => body(items * c / chunks, items * (c + 1) / chunks));
    }

    /// <summary>body(0) … body(count − 1) spread over torch's threads as <see cref="ForChunks"/> spreads them.</summary>
    public static void ForEach(long count, Action<long> body) =>
        ForChunks(count, 1, (first, last) => { for (long c = first; c < last; c++) body(c); });

    /// <summary>n values (bf16 or fp32) into fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Load(void* source, bool bf16, float* destination, int n)
    {
        if (!bf16) { new Span<float>(source, n).CopyTo(new Span<float>(destination, n)); return; }
        var s = (ushort*)source;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var (lo, hi) = Vector256.Widen(Vector256.Load(s + i));
            Vector256.ShiftLeft(lo, 16).AsSingle().Store(destination + i);
            Vector256.ShiftLeft(hi, 16).AsSingle().Store(destination + i + 8);
        }
        for (; i < n; i++) destination[i] = BitConverter.UInt32BitsToSingle((uint)s[i] << 16);
    }

    /// <summary>n fp32 values into bf16 (rounded) or fp32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Store(float* source, void* destination, bool bf16, int n)
    {
        if (!bf16) { new Span<float>(source, n).CopyTo(new Span<float>(destination, n)); return; }
        var d = (ushort*)destination;
        int i = 0;
        for (; i + 16 <= n; i += 16)
            Vector256.Narrow(RoundBits(Vector256.Load(source + i)), RoundBits(Vector256.Load(source + i + 8))).Store(d + i);
        for (; i < n; i++) d[i] = (ushort)(RoundBits(source[i]) >> 16);
    }

    /// <summary>fp32 → bf16 rounding to nearest even, as the high 16 bits of the result (torch's conversion; NaN stays NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> RoundBits(Vector256<float> v)
    {
        var bits = v.AsUInt32();
        var rounded = bits + Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256.Create(1u));
        var nan = ~Vector256.Equals(v, v).AsUInt32();
        return Vector256.ConditionalSelect(nan, Vector256.Create(0x7FC00000u), rounded) >> 16;
    }

    public static uint RoundBits(float v)
    {
        if (float.IsNaN(v)) return 0x7FC00000u;
        uint bits = BitConverter.SingleToUInt32Bits(v);
        return bits + 0x7FFFu + ((bits >> 16) & 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RoundToBf16(float* v, int n)
    {
        int i = 0;
        for (; i + 8 <= n; i += 8) (RoundBits(Vector256.Load(v + i)) << 16).AsSingle().Store(v + i);
        for (; i < n; i++) v[i] = BitConverter.UInt32BitsToSingle(RoundBits(v[i]) >> 16 << 16);
    }

}
