using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>The decoding matrix-vector kernel against torch's products, where it applies and where it must not.</summary>
public class DecodeMatmulTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Theory]
    [InlineData(1, 16, 1, false)]     // a single weight row: only the one-row tail
    [InlineData(1, 48, 7, true)]      // four-row blocks and a tail of three, with bias
    [InlineData(3, 512, 130, false)]  // several input rows
    [InlineData(4, 2048, 67, true)]
    [InlineData(1, 2048, 8192, false)] // a 1B-shaped projection, split over threads
    public void Matches_the_fp32_product_rounded_once_to_bf16(int rows, int inFeatures, int outFeatures, bool withBias)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(11);
        var x = randn([1, rows, inFeatures], generator: generator).to(ScalarType.BFloat16);
        var w = (0.05 * randn([outFeatures, inFeatures], generator: generator)).to(ScalarType.BFloat16);
        var b = withBias ? randn([outFeatures], generator: generator).to(ScalarType.BFloat16) : null;
        using var _ = no_grad();
        Assert.True(DecodeMatmul.Applies(x, w, b));
        var y = DecodeMatmul.Linear(x, w, b);
        Assert.Equal(new long[] { 1, rows, outFeatures }, y.shape);
        Assert.Equal(ScalarType.BFloat16, y.dtype);

        // Exact in fp64, rounded once: the kernel differs only by fp32 summation order, so at most one bf16 step.
        var exact = x.to(ScalarType.Float64).matmul(w.to(ScalarType.Float64).t());
        if (b is not null) exact += b.to(ScalarType.Float64);
        var rounded = exact.to(ScalarType.BFloat16).to(ScalarType.Float64);
        var got = y.to(ScalarType.Float64);
        double same = (got == rounded).to(ScalarType.Float64).mean().item<double>();
        // One bf16 step at each value's magnitude: 2^-7 relative, with a floor for values near zero.
        var step = exact.abs().clamp_min(1e-3) * Math.Pow(2, -7);
        double worstSteps = ((got - exact).abs() / step).max().item<double>();
        var torchY = nn.functional.linear(x, w, b).to(ScalarType.Float64);
        double sameAsTorch = (got == torchY).to(ScalarType.Float64).mean().item<double>();
        output.WriteLine($"rows {rows}, {inFeatures}→{outFeatures}: {same:P1} equal to the rounded exact product, {sameAsTorch:P1} to F.linear, worst {worstSteps:F2} bf16 steps");
        Assert.True(same > 0.95, $"only {same:P1} equal the rounded exact product");
        Assert.True(worstSteps <= 1.0, $"{worstSteps} bf16 steps from the exact product");
    }

    [Fact]
    public void Does_not_apply_where_torch_must_compute()
    {
        using var scope = NewDisposeScope();
        var x = randn(1, 32).to(ScalarType.BFloat16);
        var w = randn(8, 32).to(ScalarType.BFloat16);
        using (no_grad())
        {
            Assert.True(DecodeMatmul.Applies(x, w, null));
            Assert.False(DecodeMatmul.Applies(randn(5, 32).to(ScalarType.BFloat16), w, null), "more rows than decoding has");
            Assert.False(DecodeMatmul.Applies(randn(1, 24).to(ScalarType.BFloat16), randn(8, 24).to(ScalarType.BFloat16), null), "in-features not a multiple of 16");
            Assert.False(DecodeMatmul.Applies(x.to(ScalarType.Float32), w.to(ScalarType.Float32), null), "fp32");
            Assert.False(DecodeMatmul.Applies(x, randn(32, 8).to(ScalarType.BFloat16).t(), null), "a transposed weight view");
            Assert.False(DecodeMatmul.Applies(x, w, randn(8)), "an fp32 bias");
        }
        // Training (autograd on) always takes F.linear: the kernel has no backward.
        Assert.False(DecodeMatmul.Applies(x, w, null));
    }

    [Fact]
    public void Bf16_greedy_decoding_with_the_kernel_matches_decoding_through_torch()
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.BFloat16, ScalarType.BFloat16);
        int[] prompt = [1, 5, 9, 60, 17];
        var options = new GenerationOptions { MaxNewTokens = 12 };
        var kernelLogits = new List<Tensor>();
        var withKernel = Generation.Generate(model, prompt, options, onLogits: l => kernelLogits.Add(l.to(ScalarType.Float32).DetachFromDisposeScope()));
        var torchLogits = new List<Tensor>();
        List<int> withTorch;
        DecodeMatmul.OffOnThisThread = true;
        try { withTorch = Generation.Generate(model, prompt, options, onLogits: l => torchLogits.Add(l.to(ScalarType.Float32).DetachFromDisposeScope())); }
        finally { DecodeMatmul.OffOnThisThread = false; }
        double worst = kernelLogits.Zip(torchLogits).Max(p => (p.First - p.Second).abs().max().item<float>());
        double scale = torchLogits.Max(l => l.abs().max().item<float>());
        output.WriteLine($"kernel {string.Join(" ", withKernel)}; torch {string.Join(" ", withTorch)}; max |Δ logits| {worst} of max |logit| {scale}");
        Assert.Equal(withTorch, withKernel);
        Assert.True(worst < 0.05 * scale, $"logits differ by {worst} (scale {scale})");
        foreach (var t in kernelLogits.Concat(torchLogits)) t.Dispose();
    }

    [Fact]
    public void The_kernels_run_on_torchs_openmp_threads_every_chunk_once_and_failures_reach_the_caller()
    {
        // libtorch-cpu for linux-x64 ships libgomp; finding it is what keeps kernels off .NET's pool (OpenMpPool's why).
        Assert.True(OpenMpPool.Available, "libtorch's libgomp was not found in /proc/self/maps");
        var counts = new int[37];
        var threads = new System.Collections.Concurrent.ConcurrentDictionary<int, bool>();
        Assert.True(OpenMpPool.TryRun(counts.Length, c => { Interlocked.Increment(ref counts[c]); threads[Environment.CurrentManagedThreadId] = true; }));
        Assert.All(counts, n => Assert.Equal(1, n));
        output.WriteLine($"{threads.Count} threads ran the chunks (torch threads: {get_num_threads()})");
        Assert.InRange(threads.Count, 1, get_num_threads());
        var e = Assert.Throws<InvalidOperationException>(() => OpenMpPool.TryRun(4, c => { if (c == 2) throw new InvalidOperationException("chunk 2"); }));
        Assert.Equal("chunk 2", e.Message);
    }
}
