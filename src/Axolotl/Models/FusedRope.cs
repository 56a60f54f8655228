using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// Rotary embedding (<see cref="Rope.Apply"/>, full rotary, split halves) as one CPU pass forward and one backward in
/// place of torch's narrow, neg, cat, two multiplies and an add (and their backward kernels). With x = [x1, x2] and the
/// angles' halves c1, c2, s1, s2: y = [x1·c1 − x2·s1, x2·c2 + x1·s2], each product and the sum rounded to the input
/// dtype as the composition rounds them; backward gx = [gy1·c1 + gy2·s2, gy2·c2 − gy1·s1], likewise rounded.
/// x: contiguous [batch, seq, heads, head_dim], the projection's own layout, before attention transposes it; cos/sin
/// contiguous [seq, dim] or, packed, [batch, 1, seq, dim], in x's dtype. Anything else keeps the composition.
/// </summary>
internal sealed class FusedRope : autograd.SingleTensorFunction<FusedRope>
{
    public override string Name => nameof(FusedRope);

    public static bool Applies(Tensor x, Tensor cos, Tensor sin)
    {
        if (x.device_type != DeviceType.CPU || cos.device_type != DeviceType.CPU || x.dim() != 4 || !x.is_contiguous()
            || x.dtype is not (ScalarType.BFloat16 or ScalarType.Float32)) return false;
        if (cos.dtype != x.dtype || sin.dtype != x.dtype || !cos.is_contiguous() || !sin.is_contiguous() || !cos.shape.SequenceEqual(sin.shape)) return false;
        long d = x.shape[3];
        if (d % 2 != 0 || cos.shape[^1] != d) return false;
        return cos.dim() == 2 ? cos.shape[0] == x.shape[1]
            : cos.dim() == 4 && cos.shape[0] == x.shape[0] && cos.shape[1] == 1 && cos.shape[2] == x.shape[1];
    }

    public static Tensor Run(Tensor x, Tensor cos, Tensor sin) => apply([x, cos, sin]);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (x, cos, sin) = ((Tensor)vars[0], (Tensor)vars[1], (Tensor)vars[2]);
        var y = empty_like(x);
        RopeKernels.Rotate(x, cos, sin, y, inverse: false);
        ctx.save_for_backward([cos, sin]);
        ctx.save_data("shape", x.shape);
        return y;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var saved = ctx.get_saved_variables();
        var (cos, sin) = (saved[0], saved[1]);
        var shape = (long[])ctx.get_data("shape");
        using var gy = Cast.To(gradOutput, cos.dtype).contiguous();
        var gx = empty(shape, cos.dtype, device: cos.device);
        RopeKernels.Rotate(gy, cos, sin, gx, inverse: true);
        return [gx, null!, null!];
    }
}

static unsafe class RopeKernels
{
    /// <summary>
    /// output = rotation of input ([batch, seq, heads, head_dim], both contiguous) by the angles; inverse: the
    /// transpose (the backward of the rotation): [a·c1 + b·s2, b·c2 − a·s1] instead of [a·c1 − b·s1, b·c2 + a·s2].
    /// </summary>
    public static void Rotate(Tensor input, Tensor cos, Tensor sin, Tensor output, bool inverse)
    {
        long batch = input.shape[0], seq = input.shape[1], heads = input.shape[2], d = input.shape[3];
        bool packed = cos.dim() == 4, bf16 = input.dtype == ScalarType.BFloat16;
        int size = bf16 ? 2 : 4, half = (int)(d / 2);
        long rows = batch * heads * seq;
        fixed (byte* inStart = input.bytes) fixed (byte* cosStart = cos.bytes) fixed (byte* sinStart = sin.bytes) fixed (byte* outStart = output.bytes)
        {
            nint inAt = (nint)inStart, cosAt = (nint)cosStart, sinAt = (nint)sinStart, outAt = (nint)outStart;
            CpuKernels.ForChunks(rows, 64, (first, last) =>
            {
                var buffer = new float[4 * d];
                fixed (float* scratch = buffer)
                {
                    float* v = scratch, c = scratch + d, s = scratch + 2 * d, o = scratch + 3 * d;
                    long loadedAngles = -1;
                    for (long r = first; r < last; r++)
                    {
                        long t = r / heads % seq, b = r / (seq * heads);
                        long angleRow = packed ? b * seq + t : t;
                        CpuKernels.Load((byte*)inAt + r * d * size, bf16, v, (int)d);
                        if (angleRow != loadedAngles)
                        {
                            // Consecutive rows are the heads of one position: its angles are loaded once.
                            CpuKernels.Load((byte*)cosAt + angleRow * d * size, bf16, c, (int)d);
                            CpuKernels.Load((byte*)sinAt + angleRow * d * size, bf16, s, (int)d);
                            loadedAngles = angleRow;
                        }
                        // Each product rounded to the dtype, then the sum (as x·cos + rotated·sin rounds).
                        float* a = v, bh = v + half, c1 = c, c2 = c + half, s1 = s, s2 = s + half;
                        Products(o, a, c1, bh, inverse ? s2 : s1, inverse ? 1f : -1f, half, bf16);          // first half
                        Products(o + half, bh, c2, a, inverse ? s1 : s2, inverse ? -1f : 1f, half, bf16);    // second half
                        CpuKernels.Store(o, (byte*)outAt + r * d * size, bf16, (int)d);
                    }
                }
            });
        }
    }

    /// <summary>o = round(x·c) + round(sign·y·s), products rounded to bf16 when the tensors are bf16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Products(float* o, float* x, float* c, float* y, float* s, float sign, int n, bool bf16)
    {
        int i = 0;
        var signs = Vector256.Create(sign);
        for (; i + 8 <= n; i += 8)
        {
            var p = Vector256.Load(x + i) * Vector256.Load(c + i);
            var q = signs * Vector256.Load(y + i) * Vector256.Load(s + i);
            if (bf16) { p = (CpuKernels.RoundBits(p) << 16).AsSingle(); q = (CpuKernels.RoundBits(q) << 16).AsSingle(); }
            (p + q).Store(o + i);
        }
        for (; i < n; i++) o[i] = R(x[i] * c[i], bf16) + R(sign * y[i] * s[i], bf16);
    }

    static float R(float v, bool bf16) => bf16 ? BitConverter.UInt32BitsToSingle(CpuKernels.RoundBits(v) >> 16 << 16) : v;
}
