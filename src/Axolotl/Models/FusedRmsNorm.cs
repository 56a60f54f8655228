using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// Llama's RMSNorm (<see cref="RmsNorm"/> with offset 0) as one CPU pass per row forward and one backward, in place of
/// the ~8 forward and ~12 backward torch kernels (each a parallel region with its barrier) of the composition
/// cast fp32 → square → mean → add eps → rsqrt → multiply → cast back → multiply by w.
/// It computes what the composition computes, rounding where it rounds: in fp32, n = x·rsqrt(mean(x²) + eps) rounded to
/// the input dtype, y = w·n rounded; backward gw = Σ_rows gy·n, gn = gy·w rounded, gx = r·gn − r³·x·Σ(gn·x)/H rounded.
/// Sums run in another order than torch's, so fp32 results agree to rounding, bf16 ones to a bf16 ulp now and then.
/// </summary>
/// <remarks>
/// Used for contiguous CPU tensors in bf16 or fp32 whose weight has the input's dtype; anything else (CUDA, a strided
/// view, mixed dtypes) keeps the TorchSharp composition. <c>AXOLOTL_CPU_KERNELS</c> (see <see cref="CpuKernels.Uses"/>) selects the fused kernels, for
/// A/B measurement.
/// </remarks>
internal sealed class FusedRmsNorm : autograd.SingleTensorFunction<FusedRmsNorm>
{
    public override string Name => nameof(FusedRmsNorm);

    public static bool Applies(Tensor x, Tensor weight) =>
        x.device_type == DeviceType.CPU && weight.device_type == DeviceType.CPU
        && x.dtype is ScalarType.BFloat16 or ScalarType.Float32 && weight.dtype == x.dtype
        && x.is_contiguous() && weight.is_contiguous() && x.dim() >= 1 && x.shape[^1] == weight.shape[0] && weight.dim() == 1
        && x.numel() > 0;

    public static Tensor Run(Tensor x, Tensor weight, double eps) => apply([x, weight, eps]);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (x, weight, eps) = ((Tensor)vars[0], (Tensor)vars[1], (double)vars[2]);
        long hidden = x.shape[^1], rows = x.numel() / hidden;
        var y = empty_like(x);
        var rstd = empty(rows, ScalarType.Float32, device: x.device);
        RmsNormKernels.Forward(x, weight, (float)eps, y, rstd);
        ctx.save_for_backward([x, weight, rstd]);
        ctx.save_data("inputNeedsGrad", x.requires_grad);
        ctx.save_data("weightNeedsGrad", weight.requires_grad);
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var saved = ctx.get_saved_variables();
        var (x, weight, rstd) = (saved[0], saved[1], saved[2]);
        bool inputNeedsGrad = (bool)ctx.get_data("inputNeedsGrad"), weightNeedsGrad = (bool)ctx.get_data("weightNeedsGrad");
        using var gy = Cast.To(gradOutput, x.dtype).contiguous();
        var gx = inputNeedsGrad ? empty_like(x) : null;
        var gw = weightNeedsGrad ? empty_like(weight) : null;
        RmsNormKernels.Backward(x, weight, rstd, gy, gx, gw);
        return [gx!, gw!, null!];
    }
}

/// <summary>The row loops of <see cref="FusedRmsNorm"/> on the tensors' memory, rows split over torch's thread count.</summary>
static unsafe class RmsNormKernels
{
    static int ChunkCount(long rows) => CpuKernels.ChunkCount(rows, 8);
    static void ForRowChunks(long rows, Action<long, long> body) => CpuKernels.ForChunks(rows, 8, body);
    static void Load(void* source, bool bf16, float* destination, int n) => CpuKernels.Load(source, bf16, destination, n);
    static void Store(float* source, void* destination, bool bf16, int n) => CpuKernels.Store(source, destination, bf16, n);
    static void RoundToBf16(float* v, int n) => CpuKernels.RoundToBf16(v, n);

    public static void Forward(Tensor x, Tensor weight, float eps, Tensor y, Tensor rstd)
    {
        long hidden = x.shape[^1], rows = x.numel() / hidden;
        bool bf16 = x.dtype == ScalarType.BFloat16;
        fixed (byte* xStart = x.bytes) fixed (byte* wStart = weight.bytes) fixed (byte* yStart = y.bytes) fixed (byte* rStart = rstd.bytes)
        {
            nint xAt = (nint)xStart, wAt = (nint)wStart, yAt = (nint)yStart, rAt = (nint)rStart;
            int h = (int)hidden;
            ForRowChunks(rows, (first, last) =>
            {
                var buffer = new float[2 * h];
                fixed (float* scratch = buffer)
                {
                    float* w = scratch, row = scratch + h;
                    Load((void*)wAt, bf16, w, h);
                    for (long r = first; r < last; r++)
                    {
                        Load((byte*)xAt + r * hidden * (bf16 ? 2 : 4), bf16, row, h);
                        float scale = 1f / MathF.Sqrt(SumOfSquares(row, h) / h + eps);
                        ((float*)rAt)[r] = scale;
                        ScaleRound(row, scale, h, bf16);      // n = x·r, in the input dtype
                        Multiply(row, w, h);                  // y = w·n
                        Store(row, (byte*)yAt + r * hidden * (bf16 ? 2 : 4), bf16, h);
                    }
                }
            });
        }
    }

    public static void Backward(Tensor x, Tensor weight, Tensor rstd, Tensor gy, Tensor? gx, Tensor? gw)
    {
        long hidden = x.shape[^1], rows = x.numel() / hidden;
        bool bf16 = x.dtype == ScalarType.BFloat16;
        int h = (int)hidden;
        int chunks = ChunkCount(rows);
        var partial = gw is null ? null : new float[chunks * h];
        fixed (byte* xStart = x.bytes) fixed (byte* wStart = weight.bytes) fixed (byte* rStart = rstd.bytes) fixed (byte* gyStart = gy.bytes)
        fixed (byte* gxStart = gx is null ? default : gx.bytes)
        fixed (float* partialStart = partial)
        {
            nint xAt = (nint)xStart, wAt = (nint)wStart, rAt = (nint)rStart, gyAt = (nint)gyStart, gxAt = (nint)gxStart, pAt = (nint)partialStart;
            int elementSize = bf16 ? 2 : 4;
            Parallel.For(0, chunks, chunk =>
            {
                long first = rows * chunk / chunks, last = rows * (chunk + 1) / chunks;
                var buffer = new float[4 * h];
                fixed (float* scratch = buffer)
                {
                    float* w = scratch, xs = scratch + h, g = scratch + 2 * h, n = scratch + 3 * h;
                    float* accumulator = partial is null ? null : (float*)pAt + chunk * h;
                    if (accumulator != null) new Span<float>(accumulator, h).Clear();
                    Load((void*)wAt, bf16, w, h);
                    for (long r = first; r < last; r++)
                    {
                        long offset = r * hidden * elementSize;
                        Load((byte*)xAt + offset, bf16, xs, h);
                        Load((byte*)gyAt + offset, bf16, g, h);
                        float scale = ((float*)rAt)[r];
                        if (accumulator != null)
                        {
                            new Span<float>(xs, h).CopyTo(new Span<float>(n, h));
                            ScaleRound(n, scale, h, bf16);
                            MultiplyAdd(accumulator, g, n, h);  // gw += gy·n
                        }
                        if (gxAt == 0) continue;
                        Multiply(g, w, h);                       // gn = gy·w, in the input dtype
                        if (bf16) RoundToBf16(g, h);
                        float dot = Dot(g, xs, h);
                        // gx = r·gn − r³·x·Σ(gn·x)/H
                        Combine(g, xs, scale, -scale * scale * scale * dot / h, h);
                        Store(g, (byte*)gxAt + offset, bf16, h);
                    }
                }
            });
        }
        if (gw is not null)
        {
            var total = new float[h];
            for (int c = 0; c < chunks; c++)
                for (int i = 0; i < h; i++) total[i] += partial![c * h + i];
            fixed (float* t = total) fixed (byte* gwStart = gw.bytes) Store(t, gwStart, bf16, h);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float SumOfSquares(float* v, int n)
    {
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= n; i += 8) { var a = Vector256.Load(v + i); acc += a * a; }
        float sum = Vector256.Sum(acc);
        for (; i < n; i++) sum += v[i] * v[i];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Dot(float* a, float* b, int n)
    {
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= n; i += 8) acc += Vector256.Load(a + i) * Vector256.Load(b + i);
        float sum = Vector256.Sum(acc);
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>v = round(v·scale) in the input dtype.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ScaleRound(float* v, float scale, int n, bool bf16)
    {
        int i = 0;
        var s = Vector256.Create(scale);
        for (; i + 8 <= n; i += 8) (Vector256.Load(v + i) * s).Store(v + i);
        for (; i < n; i++) v[i] *= scale;
        if (bf16) RoundToBf16(v, n);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply(float* v, float* w, int n)
    {
        int i = 0;
        for (; i + 8 <= n; i += 8) (Vector256.Load(v + i) * Vector256.Load(w + i)).Store(v + i);
        for (; i < n; i++) v[i] *= w[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void MultiplyAdd(float* accumulator, float* a, float* b, int n)
    {
        int i = 0;
        for (; i + 8 <= n; i += 8) (Vector256.Load(accumulator + i) + Vector256.Load(a + i) * Vector256.Load(b + i)).Store(accumulator + i);
        for (; i < n; i++) accumulator[i] += a[i] * b[i];
    }

    /// <summary>g = a·g + b·x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Combine(float* g, float* x, float a, float b, int n)
    {
        int i = 0;
        var va = Vector256.Create(a);
        var vb = Vector256.Create(b);
        for (; i + 8 <= n; i += 8) (va * Vector256.Load(g + i) + vb * Vector256.Load(x + i)).Store(g + i);
        for (; i < n; i++) g[i] = a * g[i] + b * x[i];
    }
}
