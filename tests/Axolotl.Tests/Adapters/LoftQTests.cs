using Axolotl.Adapters;
using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Adapters;

/// <summary>LoftQ (PEFT's loftq_init): the adapter starts as the top-r SVD part of the quantisation residual.</summary>
public class LoftQTests
{
    static Tensor Weight(long rows = 64, long columns = 48, ulong seed = 5)
    {
        using var generator = new Generator(seed);
        return randn([rows, columns], generator: generator) * 0.05;
    }

    /// <summary>The residual's best rank-r part and its top singular values, from the eigendecomposition of RᵀR (not an SVD).</summary>
    static (Tensor Projection, Tensor Singular) RankR(Tensor residual, int rank)
    {
        var gram = residual.T.matmul(residual).to(ScalarType.Float64);
        var (values, vectors) = linalg.eigh(gram); // ascending
        long n = values.shape[0];
        var top = vectors.narrow(1, n - rank, rank).to(ScalarType.Float32);
        var singular = values.narrow(0, n - rank, rank).flip(0).clamp_min(0).sqrt().to(ScalarType.Float32);
        return (residual.matmul(top).matmul(top.T), singular);
    }

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    static double Norm(Tensor t) => t.norm().item<float>();

    [Theory]
    [InlineData(4)]
    [InlineData(8)]
    public void The_adapter_is_the_residuals_best_rank_r_part_split_by_root_singular_values(int bits)
    {
        using var scope = NewDisposeScope();
        const int rank = 4;
        var w = Weight();
        var (dequantized, a, b) = LoftQ.Decompose(w, rank, LoftQ.RoundTrip(bits));
        Assert.Equal([rank, 48L], a.shape);
        Assert.Equal([64L, rank], b.shape);
        // One iteration: the new base is the plain quantization of W.
        Assert.True(Same(dequantized, LoftQ.RoundTrip(bits)(w)));
        var residual = w - dequantized;
        var (projection, singular) = RankR(residual, rank);
        Assert.True(b.matmul(a).allclose(projection, rtol: 1e-3, atol: 1e-5), "B·A is not the rank-r part of the residual");
        // √S on each side: A·Aᵀ = BᵀB = diag(S), the top singular values.
        Assert.True(a.matmul(a.T).allclose(diag(singular), rtol: 1e-3, atol: 1e-5), "A·Aᵀ is not diag(S)");
        Assert.True(b.T.matmul(b).allclose(diag(singular), rtol: 1e-3, atol: 1e-5), "BᵀB is not diag(S)");
        // Against plain QLoRA's start (B = 0): the error falls, to √(‖R‖² − ΣS²) with the whole B·A and below ‖R‖ at PEFT's
        // unscaled A, B under a LoRA scale of 0.5 too.
        double plain = Norm(residual);
        double full = Norm(w - dequantized - b.matmul(a));
        double halfScaled = Norm(w - dequantized - 0.5 * b.matmul(a));
        Assert.Equal(Math.Sqrt(plain * plain - singular.square().sum().item<float>()), full, 4);
        Assert.True(full < plain && halfScaled < plain, $"plain {plain}, LoftQ {full}, LoftQ at scale 0.5 {halfScaled}");
    }

    [Fact]
    public void A_second_iteration_quantizes_w_minus_the_first_adapter()
    {
        using var scope = NewDisposeScope();
        var w = Weight(seed: 9);
        var roundTrip = LoftQ.RoundTrip(4);
        var (_, a1, b1) = LoftQ.Decompose(w, 4, roundTrip);
        var (dequantized, a2, b2) = LoftQ.Decompose(w, 4, roundTrip, iterations: 2);
        Assert.True(Same(dequantized, roundTrip(w - b1.matmul(a1))));
        var (projection, _) = RankR(w - dequantized, 4);
        Assert.True(b2.matmul(a2).allclose(projection, rtol: 1e-3, atol: 1e-5));
    }

    [Fact]
    public void A_rank_beyond_the_weight_is_a_user_error()
    {
        using var scope = NewDisposeScope();
        Assert.Contains("lora_r 64", Assert.Throws<UserError>(() => LoftQ.Decompose(Weight(64, 48), 64, LoftQ.RoundTrip(4))).Message);
    }
}
