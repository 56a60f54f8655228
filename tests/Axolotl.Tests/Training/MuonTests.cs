using Axolotl.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>optimizer: muon as Axolotl wires it, against a Newton-Schulz iteration written out here in doubles.</summary>
public class MuonTests
{
    static readonly (double A, double B, double C)[] Steps =
        [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)];

    static double[,] MatMul(double[,] x, double[,] y)
    {
        int n = x.GetLength(0), k = x.GetLength(1), m = y.GetLength(1);
        var r = new double[n, m];
        for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) { double s = 0; for (int t = 0; t < k; t++) s += x[i, t] * y[t, j]; r[i, j] = s; }
        return r;
    }

    static double[,] T(double[,] x)
    {
        var r = new double[x.GetLength(1), x.GetLength(0)];
        for (int i = 0; i < x.GetLength(0); i++) for (int j = 0; j < x.GetLength(1); j++) r[j, i] = x[i, j];
        return r;
    }

    /// <summary>Five Newton-Schulz steps on the wide orientation, after scaling to Frobenius norm 1.</summary>
    static double[,] NewtonSchulz(double[,] g)
    {
        bool tall = g.GetLength(0) > g.GetLength(1);
        var x = tall ? T(g) : (double[,])g.Clone();
        double norm = Math.Sqrt(x.Cast<double>().Sum(v => v * v));
        int rows = x.GetLength(0), cols = x.GetLength(1);
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) x[i, j] /= norm + 1e-8;
        foreach (var (a, b, c) in Steps)
        {
            var gram = MatMul(x, T(x));
            var square = MatMul(gram, gram);
            var poly = new double[rows, rows];
            for (int i = 0; i < rows; i++) for (int j = 0; j < rows; j++) poly[i, j] = b * gram[i, j] + c * square[i, j];
            var px = MatMul(poly, x);
            for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) x[i, j] = a * x[i, j] + px[i, j];
        }
        return tall ? T(x) : x;
    }

    static double[,] Random(int rows, int cols, int seed)
    {
        var r = new Random(seed);
        var m = new double[rows, cols];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) m[i, j] = r.NextDouble() * 2 - 1;
        return m;
    }

    static Tensor ToTensor(double[,] m) => tensor(m.Cast<double>().Select(v => (float)v).ToArray(), [m.GetLength(0), m.GetLength(1)]);

    static double RelativeError(double[,] expected, Tensor actual)
    {
        var a = actual.to(ScalarType.Float64).data<double>().ToArray();
        var e = expected.Cast<double>().ToArray();
        return Math.Sqrt(a.Zip(e, (x, y) => (x - y) * (x - y)).Sum() / e.Sum(v => v * v));
    }

    [Theory]
    [InlineData(16, 32)]
    [InlineData(48, 24)] // tall: orthogonalised on its transpose
    public void Newton_schulz_in_bf16_matches_the_iteration_and_orthogonalises(int rows, int cols)
    {
        using var scope = NewDisposeScope();
        var g = Random(rows, cols, rows);
        var expected = NewtonSchulz(g);
        var actual = TrainingOptimizerProbe.NewtonSchulz(ToTensor(g));
        Assert.Equal(ScalarType.BFloat16, actual.dtype);
        double error = RelativeError(expected, actual);
        Assert.True(error < 0.03, $"relative error {error} against the double-precision iteration");
        // Orthogonalised: the singular values sit near 1 (the quintic's band), whatever the input's spread.
        var singular = linalg.svdvals(actual.to(ScalarType.Float32)).data<float>().ToArray();
        Assert.All(singular, s => Assert.InRange(s, 0.5f, 1.3f));
    }

    [Fact]
    public void One_step_sends_matrices_to_muon_and_embeddings_and_vectors_to_adamw()
    {
        using var scope = NewDisposeScope();
        const double Lr = 0.02, Decay = 0.1;
        var w0 = Random(8, 16, 1); var gw = Random(8, 16, 2);
        var e0 = Random(10, 8, 3); var ge = Random(10, 8, 4);
        var w = new Parameter(ToTensor(w0));
        var e = new Parameter(ToTensor(e0));
        var n = new Parameter(ones(8));
        var options = new TrainingOptions { WeightDecay = Decay, Beta1 = 0.9, Beta2 = 0.95 };
        using var optimizer = TrainingOptimizer.Create("muon", [("model.layers.0.self_attn.q_proj.weight", w), ("model.embed_tokens.weight", e), ("model.norm.weight", n)], options);
        w.grad = ToTensor(gw); e.grad = ToTensor(ge); n.grad = full(8, 0.5f);
        optimizer.Step(Lr);
        // Muon: momentum g, Nesterov input 0.95·g + g, orthogonalised, scaled by √(8/16), decoupled decay.
        var nesterov = new double[8, 16];
        for (int i = 0; i < 8; i++) for (int j = 0; j < 16; j++) nesterov[i, j] = 1.95 * gw[i, j];
        var orthogonal = NewtonSchulz(nesterov);
        var expectedW = new double[8, 16];
        for (int i = 0; i < 8; i++) for (int j = 0; j < 16; j++) expectedW[i, j] = w0[i, j] * (1 - Lr * Decay) - Lr * Math.Sqrt(0.5) * orthogonal[i, j];
        var stepW = w.detach().to(ScalarType.Float64).data<double>().ToArray().Select((v, k) => v - w0[k / 16, k % 16] * (1 - Lr * Decay)).ToArray();
        var expectedStep = expectedW.Cast<double>().Select((v, k) => v - w0[k / 16, k % 16] * (1 - Lr * Decay)).ToArray();
        double error = Math.Sqrt(stepW.Zip(expectedStep, (a, b) => (a - b) * (a - b)).Sum() / expectedStep.Sum(v => v * v));
        Assert.True(error < 0.03, $"Muon step off by {error}");
        // AdamW's first step is lr·sign(g) (bias-corrected m/√v = g/|g|); the embedding is not decayed.
        var eAfter = e.detach().data<float>().ToArray();
        for (int k = 0; k < 80; k++) Assert.Equal(e0[k / 8, k % 8] - Lr * Math.Sign(ge[k / 8, k % 8]), eAfter[k], 5);
        Assert.All(n.detach().data<float>().ToArray(), v => Assert.Equal(1 - Lr, v, 5));
        // State: one momentum matrix for Muon, two moments for each AdamW tensor.
        Assert.Equal([1, 2, 2], Enumerable.Range(0, 3).Select(i => optimizer.StateTensors(i).Count));
    }

    [Fact]
    public void Muon_resumes_exactly_and_loads_with_its_betas()
    {
        using var scope = NewDisposeScope();
        float[] Run(bool reload)
        {
            var w = new Parameter(ToTensor(Random(8, 16, 1)));
            var options = new TrainingOptions();
            var o = TrainingOptimizer.Create("muon", [("q_proj.weight", w)], options);
            for (int s = 0; s < 3; s++)
            {
                w.grad = ToTensor(Random(8, 16, 10 + s));
                o.Step(0.01);
                if (reload && s == 0)
                {
                    var stream = new MemoryStream();
                    o.Save(new BinaryWriter(stream));
                    o = TrainingOptimizer.Create("muon", [("q_proj.weight", w)], options);
                    stream.Position = 0;
                    o.Load(new BinaryReader(stream));
                }
            }
            return w.detach().data<float>().ToArray();
        }
        Assert.Equal(Run(false), Run(true));
        var c = Axolotl.Config.ConfigLoader.Parse("base_model: m\ndatasets:\n  - path: d.jsonl\nlearning_rate: 0.001\noptimizer: muon\n", "c.yml");
        Assert.Equal(("muon", 0.9, 0.95), (c.Optimizer, c.AdamBeta1, c.AdamBeta2));
        Assert.Empty(c.Warnings);
    }
}
