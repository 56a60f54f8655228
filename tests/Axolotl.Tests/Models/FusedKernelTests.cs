using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>The fused CPU kernels against the TorchSharp compositions they replace: values and gradients, fp32 and bf16, odd sizes.</summary>
public class FusedKernelTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static readonly double Eps = 1e-5;

    /// <summary>Runs the norm and its backward, returning (y, gx, gw) as fp32 copies; null for a gradient not asked for.</summary>
    static (Tensor Y, Tensor? Gx, Tensor? Gw) NormAndGrads(Func<Tensor, Tensor, Tensor> norm, Tensor x0, Tensor w0, Tensor gy, bool xGrad, bool wGrad)
    {
        var x = x0.detach().clone().requires_grad_(xGrad);
        var w = w0.detach().clone().requires_grad_(wGrad);
        var y = norm(x, w);
        if (xGrad || wGrad) y.backward([gy]);
        return (y.detach().to(ScalarType.Float32), x.grad?.to(ScalarType.Float32), w.grad?.to(ScalarType.Float32));
    }

    /// <summary>max |a − b| relative to max |b|.</summary>
    static double RelativeError(Tensor a, Tensor b) =>
        (a - b).abs().max().item<float>() / Math.Max(1e-30, b.abs().max().item<float>());

    [Theory]
    [InlineData(ScalarType.Float32, new long[] { 5, 37 })]        // one chunk, a tail past every vector width
    [InlineData(ScalarType.Float32, new long[] { 2, 17, 64 })]    // several chunks of rows over the threads
    [InlineData(ScalarType.BFloat16, new long[] { 5, 37 })]
    [InlineData(ScalarType.BFloat16, new long[] { 3, 11, 48 })]
    [InlineData(ScalarType.BFloat16, new long[] { 40, 512 })]
    public void Rms_norm_matches_the_composition_values_and_gradients(ScalarType dtype, long[] shape)
    {
        using var scope = NewDisposeScope();
        var generator = new TorchSharp.torch.Generator(7);
        long hidden = shape[^1];
        var x = (randn(shape, generator: generator) * 3).to(dtype);
        var w = (1 + 0.3 * randn([hidden], generator: generator)).to(dtype);
        var gy = randn(shape, generator: generator).to(dtype);
        Assert.True(FusedRmsNorm.Applies(x, w));

        var (fy, fgx, fgw) = NormAndGrads((a, b) => FusedRmsNorm.Run(a, b, Eps), x, w, gy, true, true);
        var (ry, rgx, rgw) = NormAndGrads((a, b) => RmsNorm.Composition(a, b, Eps, 0), x, w, gy, true, true);
        double ey = RelativeError(fy, ry), egx = RelativeError(fgx!, rgx!), egw = RelativeError(fgw!, rgw!);
        output.WriteLine($"{dtype} [{string.Join(",", shape)}]: relative error y {ey:E2}, gx {egx:E2}, gw {egw:E2}");
        if (dtype == ScalarType.Float32)
        {
            Assert.True(ey < 1e-6, $"y {ey}");
            Assert.True(egx < 1e-5, $"gx {egx}");
            Assert.True(egw < 1e-5, $"gw {egw}");
        }
        else
        {
            // Same roundings in the same places: most elements identical, the rest a bf16 ulp or so apart.
            double sameY = (fy == ry).to(ScalarType.Float32).mean().item<float>();
            output.WriteLine($"  identical y elements: {sameY:P1}");
            Assert.True(sameY > 0.95, $"only {sameY:P1} of y identical");
            Assert.True(ey < 1e-2, $"y {ey}");
            Assert.True(egx < 2e-2, $"gx {egx}");
            // torch rounds every gy·n to bf16 before summing over rows; the kernel sums in fp32 and rounds once.
            Assert.True(egw < 2e-2, $"gw {egw}");
        }
    }

    [Theory]
    [InlineData(true, false)]   // LoRA: the hidden state needs a gradient, the norm weight is frozen
    [InlineData(false, true)]   // the first layer of a LoRA run with trainable norms: frozen embeddings, trained weight
    public void Rms_norm_computes_only_the_gradients_asked_for(bool xGrad, bool wGrad)
    {
        using var scope = NewDisposeScope();
        var generator = new TorchSharp.torch.Generator(3);
        var x = randn([6, 24], generator: generator).to(ScalarType.BFloat16);
        var w = (1 + 0.3 * randn([24], generator: generator)).to(ScalarType.BFloat16);
        var gy = randn([6, 24], generator: generator).to(ScalarType.BFloat16);
        var (_, fgx, fgw) = NormAndGrads((a, b) => FusedRmsNorm.Run(a, b, Eps), x, w, gy, xGrad, wGrad);
        var (_, rgx, rgw) = NormAndGrads((a, b) => RmsNorm.Composition(a, b, Eps, 0), x, w, gy, xGrad, wGrad);
        Assert.Equal(xGrad, fgx is not null);
        Assert.Equal(wGrad, fgw is not null);
        if (xGrad) Assert.True(RelativeError(fgx!, rgx!) < 2e-2);
        if (wGrad) Assert.True(RelativeError(fgw!, rgw!) < 2e-2);
    }

    [Fact]
    public void Rms_norm_keeps_the_composition_for_what_the_kernel_does_not_take()
    {
        using var scope = NewDisposeScope();
        var x = randn(4, 8, 16);
        var w = ones(16);
        Assert.False(FusedRmsNorm.Applies(x.transpose(0, 1), w));                         // strided view
        Assert.False(FusedRmsNorm.Applies(x.to(ScalarType.BFloat16), w));                // weight in another dtype
        Assert.False(FusedRmsNorm.Applies(x.to(ScalarType.Float64), w.to(ScalarType.Float64)));
        // The module still gives the composition's result on a strided input.
        var norm = new RmsNorm(16, Eps, 0, ScalarType.Float32);
        var strided = x.transpose(0, 1);
        Assert.True(RelativeError(norm.forward(strided), RmsNorm.Composition(strided, norm.weight, Eps, 0)) < 1e-7);
    }

    [Theory]
    [InlineData(ScalarType.Float32, new long[] { 3, 37 })]
    [InlineData(ScalarType.Float32, new long[] { 2, 64, 300 })]    // several chunks, blocks with a tail
    [InlineData(ScalarType.BFloat16, new long[] { 3, 37 })]
    [InlineData(ScalarType.BFloat16, new long[] { 2, 64, 300 })]
    public void SwiGlu_matches_the_composition_values_and_gradients(ScalarType dtype, long[] shape)
    {
        using var scope = NewDisposeScope();
        var generator = new TorchSharp.torch.Generator(11);
        var g0 = (randn(shape, generator: generator) * 4).to(dtype);
        var u0 = randn(shape, generator: generator).to(dtype);
        var gy = randn(shape, generator: generator).to(dtype);
        Assert.True(FusedSwiGlu.Applies(g0, u0));
        (Tensor Y, Tensor Gg, Tensor Gu) Run(Func<Tensor, Tensor, Tensor> f)
        {
            var g = g0.detach().clone().requires_grad_(true);
            var u = u0.detach().clone().requires_grad_(true);
            var y = f(g, u);
            y.backward([gy]);
            return (y.detach().to(ScalarType.Float32), g.grad!.to(ScalarType.Float32), u.grad!.to(ScalarType.Float32));
        }
        var (fy, fgg, fgu) = Run(FusedSwiGlu.Run);
        var (ry, rgg, rgu) = Run((g, u) => TorchSharp.torch.nn.functional.silu(g) * u);
        double ey = RelativeError(fy, ry), egg = RelativeError(fgg, rgg), egu = RelativeError(fgu, rgu);
        double same = ((fy == ry).to(ScalarType.Float32).mean() + (fgg == rgg).to(ScalarType.Float32).mean() + (fgu == rgu).to(ScalarType.Float32).mean()).item<float>() / 3;
        output.WriteLine($"{dtype} [{string.Join(",", shape)}]: relative error y {ey:E2}, gate grad {egg:E2}, up grad {egu:E2}; identical {same:P2}");
        double tolerance = dtype == ScalarType.Float32 ? 1e-5 : 1e-2;
        Assert.True(ey < tolerance && egg < tolerance && egu < tolerance, $"y {ey}, gate grad {egg}, up grad {egu}");
        if (dtype == ScalarType.BFloat16) Assert.True(same > 0.95, $"only {same:P1} of the bf16 values identical");
    }

    [Theory]
    [InlineData(ScalarType.Float32, false, 10)]   // halves of 5: the scalar tail only
    [InlineData(ScalarType.Float32, true, 20)]    // packed: angles per row, [batch, 1, seq, dim]; halves of 10: vector + tail
    [InlineData(ScalarType.BFloat16, false, 64)]
    [InlineData(ScalarType.BFloat16, true, 20)]
    [InlineData(ScalarType.BFloat16, true, 10)]
    public void Rope_matches_the_composition_values_and_gradients(ScalarType dtype, bool packed, long dim)
    {
        using var scope = NewDisposeScope();
        var generator = new TorchSharp.torch.Generator(5);
        long batch = 2, seq = 13, heads = 3;
        var x0 = randn([batch, seq, heads, dim], generator: generator).to(dtype);
        var gy = randn([batch, seq, heads, dim], generator: generator).to(dtype);
        Tensor cos, sin;
        if (packed)
        {
            var invFreq = 1.0f / pow(full(dim / 2, 10000.0f), arange(0, dim, 2, dtype: ScalarType.Float32) / dim);
            var positions = tensor(new long[] { 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 1, 0, 1, 2 }).view(batch, seq);
            (cos, sin) = Rope.Angles(positions.unsqueeze(1), invFreq, 1.0, dtype);
        }
        else (cos, sin) = Rope.Angles(seq, (int)dim, 10000, dtype, CPU);
        Assert.True(FusedRope.Applies(x0, cos, sin));
        (Tensor Y, Tensor Gx) Run(Func<Tensor, Tensor> f)
        {
            var x = x0.detach().clone().requires_grad_(true);
            var y = f(x);
            y.backward([gy]);
            return (y.detach().to(ScalarType.Float32), x.grad!.to(ScalarType.Float32));
        }
        var (fy, fgx) = Run(x => FusedRope.Run(x, cos, sin));
        var (ry, rgx) = Run(x => Rope.Apply(x.transpose(1, 2), cos, sin).transpose(1, 2));
        double ey = RelativeError(fy, ry), egx = RelativeError(fgx, rgx);
        double same = ((fy == ry).to(ScalarType.Float32).mean() + (fgx == rgx).to(ScalarType.Float32).mean()).item<float>() / 2;
        output.WriteLine($"{dtype} packed {packed} head_dim {dim}: relative error y {ey:E2}, gx {egx:E2}; identical {same:P2}");
        if (dtype == ScalarType.BFloat16) Assert.True(same > 0.99, $"only {same:P1} of the bf16 values identical");
        Assert.True(ey < 1e-6 && egx < 1e-6, $"y {ey}, gx {egx}");
    }
}
