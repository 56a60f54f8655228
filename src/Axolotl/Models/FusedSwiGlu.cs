using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// The gated MLP's silu(gate) · up as one CPU pass forward and one backward, in place of torch's silu, multiply and
/// their three backward kernels. Rounds where the composition rounds: s = silu(g) = g / (1 + e^−g) rounded to the input
/// dtype, y = s·u rounded; backward gu = gy·s rounded, gs = gy·u rounded, gg = gs·σ(g)·(1 + g·(1 − σ(g))) rounded.
/// Contiguous CPU bf16 or fp32 inputs of one shape; anything else keeps the composition, as does AXOLOTL_CPU_KERNELS without swiglu.
/// </summary>
internal sealed class FusedSwiGlu : autograd.SingleTensorFunction<FusedSwiGlu>
{
    public override string Name => nameof(FusedSwiGlu);

    public static bool Applies(Tensor gate, Tensor up) =>
        gate.device_type == DeviceType.CPU && up.device_type == DeviceType.CPU
        && gate.dtype is ScalarType.BFloat16 or ScalarType.Float32 && up.dtype == gate.dtype
        && gate.is_contiguous() && up.is_contiguous() && gate.shape.SequenceEqual(up.shape) && gate.numel() > 0;

    public static Tensor Run(Tensor gate, Tensor up) => apply([gate, up]);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (gate, up) = ((Tensor)vars[0], (Tensor)vars[1]);
        var y = empty_like(gate);
        SwiGluKernels.Forward(gate, up, y);
        ctx.save_for_backward([gate, up]);
        ctx.save_data("gateNeedsGrad", gate.requires_grad);
        ctx.save_data("upNeedsGrad", up.requires_grad);
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var saved = ctx.get_saved_variables();
        var (gate, up) = (saved[0], saved[1]);
        bool gateNeedsGrad = (bool)ctx.get_data("gateNeedsGrad"), upNeedsGrad = (bool)ctx.get_data("upNeedsGrad");
        using var gy = Cast.To(gradOutput, gate.dtype).contiguous();
        var gg = gateNeedsGrad ? empty_like(gate) : null;
        var gu = upNeedsGrad ? empty_like(up) : null;
        SwiGluKernels.Backward(gate, up, gy, gg, gu);
        return [gg!, gu!];
    }
}

static unsafe class SwiGluKernels
{
    const int Block = 1024; // elements converted to fp32 at a time (stays in L1)

    public static void Forward(Tensor gate, Tensor up, Tensor y)
    {
        long count = gate.numel();
        bool bf16 = gate.dtype == ScalarType.BFloat16;
        int size = bf16 ? 2 : 4;
        fixed (byte* gStart = gate.bytes) fixed (byte* uStart = up.bytes) fixed (byte* yStart = y.bytes)
        {
            nint gAt = (nint)gStart, uAt = (nint)uStart, yAt = (nint)yStart;
            CpuKernels.ForChunks(count, 16384, (first, last) =>
            {
                float* g = stackalloc float[Block];
                float* u = stackalloc float[Block];
                for (long at = first; at < last; at += Block)
                {
                    int n = (int)Math.Min(Block, last - at);
                    CpuKernels.Load((byte*)gAt + at * size, bf16, g, n);
                    CpuKernels.Load((byte*)uAt + at * size, bf16, u, n);
                    Silu(g, n);
                    if (bf16) CpuKernels.RoundToBf16(g, n);
                    Multiply(g, u, n);
                    CpuKernels.Store(g, (byte*)yAt + at * size, bf16, n);
                }
            });
        }
    }

    public static void Backward(Tensor gate, Tensor up, Tensor gy, Tensor? gg, Tensor? gu)
    {
        long count = gate.numel();
        bool bf16 = gate.dtype == ScalarType.BFloat16;
        int size = bf16 ? 2 : 4;
        fixed (byte* gStart = gate.bytes) fixed (byte* uStart = up.bytes) fixed (byte* dyStart = gy.bytes)
        fixed (byte* ggStart = gg is null ? default : gg.bytes) fixed (byte* guStart = gu is null ? default : gu.bytes)
        {
            nint gAt = (nint)gStart, uAt = (nint)uStart, dyAt = (nint)dyStart, ggAt = (nint)ggStart, guAt = (nint)guStart;
            CpuKernels.ForChunks(count, 16384, (first, last) =>
            {
                float* g = stackalloc float[Block];
                float* u = stackalloc float[Block];
                float* dy = stackalloc float[Block];
                float* t = stackalloc float[Block];
                for (long at = first; at < last; at += Block)
                {
                    int n = (int)Math.Min(Block, last - at);
                    CpuKernels.Load((byte*)gAt + at * size, bf16, g, n);
                    CpuKernels.Load((byte*)dyAt + at * size, bf16, dy, n);
                    if (guAt != 0)
                    {
                        new Span<float>(g, n).CopyTo(new Span<float>(t, n));
                        Silu(t, n);
                        if (bf16) CpuKernels.RoundToBf16(t, n);
                        Multiply(t, dy, n);                                   // gu = gy·silu(g)
                        CpuKernels.Store(t, (byte*)guAt + at * size, bf16, n);
                    }
                    if (ggAt == 0) continue;
                    CpuKernels.Load((byte*)uAt + at * size, bf16, u, n);
                    Multiply(u, dy, n);                                       // gs = gy·u
                    if (bf16) CpuKernels.RoundToBf16(u, n);
                    SiluBackward(u, g, n);                                    // gg = gs·σ(g)·(1 + g·(1 − σ(g)))
                    CpuKernels.Store(u, (byte*)ggAt + at * size, bf16, n);
                }
            });
        }
    }

    /// <summary>v = v / (1 + e^−v), as torch's silu kernel computes it.</summary>
    static void Silu(float* v, int n)
    {
        int i = 0;
        var one = Vector256.Create(1f);
        for (; i + 8 <= n; i += 8)
        {
            var x = Vector256.Load(v + i);
            (x / (one + Vector256.Exp(-x))).Store(v + i);
        }
        for (; i < n; i++) v[i] = v[i] / (1f + MathF.Exp(-v[i]));
    }

    /// <summary>grad = grad·σ(x)·(1 + x·(1 − σ(x))), torch's silu_backward.</summary>
    static void SiluBackward(float* grad, float* x, int n)
    {
        int i = 0;
        var one = Vector256.Create(1f);
        for (; i + 8 <= n; i += 8)
        {
            var xv = Vector256.Load(x + i);
            var sigmoid = one / (one + Vector256.Exp(-xv));
            (Vector256.Load(grad + i) * sigmoid * (one + xv * (one - sigmoid))).Store(grad + i);
        }
        for (; i < n; i++)
        {
            float sigmoid = 1f / (1f + MathF.Exp(-x[i]));
            grad[i] = grad[i] * sigmoid * (1f + x[i] * (1f - sigmoid));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply(float* v, float* w, int n)
    {
        int i = 0;
        for (; i + 8 <= n; i += 8) (Vector256.Load(v + i) * Vector256.Load(w + i)).Store(v + i);
        for (; i < n; i++) v[i] *= w[i];
    }
}
