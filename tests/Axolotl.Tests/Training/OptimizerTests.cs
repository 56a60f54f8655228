using Axolotl;
using Axolotl.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>
/// Each optimizer against its update rule written out here element by element in doubles (transformers' Adafactor,
/// bitsandbytes' Lion, torch's SGD), over a matrix with weight decay and a bias without.
/// </summary>
public class OptimizerTests
{
    static readonly double[] W0 = [0.5, -0.3, 0.8, 0.1, -0.7, 0.2];
    static readonly double[] B0 = [0.05, -0.1, 0.3];
    static readonly double[][] GradW = [[0.1, -0.2, 0.05, 0.3, -0.01, 0.07], [-0.05, 0.4, 0.2, -0.3, 0.02, 0.1], [0.3, 0.1, -0.1, 0.0, 0.2, -0.4]];
    static readonly double[][] GradB = [[0.2, -0.1, 0.05], [0.01, 0.3, -0.2], [-0.1, 0.1, 0.1]];
    const double Lr = 0.01, Decay = 0.1;

    /// <summary>Runs three steps of <paramref name="name"/> on a [2, 3] weight (decayed) and a [3] bias (not).</summary>
    static (float[] W, float[] B) Run(string name, bool saveAndReloadAfterFirst = false, double gradScale = 1.0)
    {
        using var scope = NewDisposeScope();
        var w = new Parameter(tensor(W0.Select(v => (float)v).ToArray(), [2, 3]));
        var b = new Parameter(tensor(B0.Select(v => (float)v).ToArray()));
        var options = new TrainingOptions { LearningRate = Lr, WeightDecay = Decay, Beta1 = 0.9, Beta2 = 0.99 };
        var optimizer = TrainingOptimizer.Create(name, [("layer.weight", w), ("layer.bias", b)], options);
        for (int step = 0; step < 3; step++)
        {
            w.grad = tensor(GradW[step].Select(v => (float)v).ToArray(), [2, 3]);
            b.grad = tensor(GradB[step].Select(v => (float)v).ToArray());
            optimizer.Step(Lr, gradScale);
            optimizer.ZeroGrad();
            if (saveAndReloadAfterFirst && step == 0)
            {
                var stream = new MemoryStream();
                optimizer.Save(new BinaryWriter(stream));
                optimizer = TrainingOptimizer.Create(name, [("layer.weight", w), ("layer.bias", b)], options);
                stream.Position = 0;
                optimizer.Load(new BinaryReader(stream));
            }
        }
        return (w.data<float>().ToArray(), b.data<float>().ToArray());
    }

    static void AssertClose(double[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) < 2e-6, $"[{i}] {expected[i]} vs {actual[i]}");
    }

    [Fact]
    public void Sgd_is_plain_gradient_descent_with_l2_weight_decay()
    {
        double[] w = [.. W0], b = [.. B0];
        for (int s = 0; s < 3; s++)
        {
            for (int i = 0; i < 6; i++) w[i] -= Lr * (GradW[s][i] + Decay * w[i]);
            for (int i = 0; i < 3; i++) b[i] -= Lr * GradB[s][i];
        }
        var (W, B) = Run("sgd");
        AssertClose(w, W);
        AssertClose(b, B);
    }

    [Fact]
    public void Lion_follows_bitsandbytes()
    {
        double[] w = [.. W0], b = [.. B0], mw = new double[6], mb = new double[3];
        static void Update(double[] p, double[] m, double[] g, double decay)
        {
            for (int i = 0; i < p.Length; i++)
            {
                double c = 0.9 * m[i] + 0.1 * g[i];
                p[i] = p[i] * (1 - Lr * decay) - Lr * Math.Sign(c);
                m[i] = 0.99 * m[i] + 0.01 * g[i];
            }
        }
        for (int s = 0; s < 3; s++) { Update(w, mw, GradW[s], Decay); Update(b, mb, GradB[s], 0); }
        var (W, B) = Run("lion_32bit");
        AssertClose(w, W);
        AssertClose(b, B);
    }

    [Fact]
    public void Adafactor_follows_transformers_with_the_trainers_settings()
    {
        double[] w = [.. W0], b = [.. B0];
        double[] row = new double[2], col = new double[3], vb = new double[3];
        static double Rms(double[] x) => Math.Sqrt(x.Sum(v => v * v) / x.Length);
        for (int s = 0; s < 3; s++)
        {
            double beta2t = 1 - Math.Pow(s + 1, -0.8);
            var g = GradW[s];
            var sq = g.Select(v => v * v + 1e-30).ToArray();
            for (int r = 0; r < 2; r++) row[r] = beta2t * row[r] + (1 - beta2t) * (sq[r * 3] + sq[r * 3 + 1] + sq[r * 3 + 2]) / 3;
            for (int c = 0; c < 3; c++) col[c] = beta2t * col[c] + (1 - beta2t) * (sq[c] + sq[3 + c]) / 2;
            double rowMean = row.Average();
            var u = new double[6];
            for (int r = 0; r < 2; r++)
                for (int c = 0; c < 3; c++) u[r * 3 + c] = g[r * 3 + c] / Math.Sqrt(row[r] / rowMean) / Math.Sqrt(col[c]);
            double clip = Math.Max(1, Rms(u));
            for (int i = 0; i < 6; i++) w[i] = w[i] - Decay * Lr * w[i] - u[i] / clip * Lr;

            var gb = GradB[s];
            for (int i = 0; i < 3; i++) vb[i] = beta2t * vb[i] + (1 - beta2t) * (gb[i] * gb[i] + 1e-30);
            var ub = gb.Select((v, i) => v / Math.Sqrt(vb[i])).ToArray();
            double clipB = Math.Max(1, Rms(ub));
            for (int i = 0; i < 3; i++) b[i] -= ub[i] / clipB * Lr;
        }
        var (W, B) = Run("adafactor");
        AssertClose(w, W);
        AssertClose(b, B);
    }

    [Fact]
    public void AdamW_follows_torch_with_the_clipping_scale_applied_to_the_gradient()
    {
        const double Scale = 0.5, Eps = 1e-8;
        double[] w = [.. W0], b = [.. B0], mw = new double[6], vw = new double[6], mb = new double[3], vb = new double[3];
        static void Update(double[] p, double[] m, double[] v, double[] grad, double decay, int t)
        {
            for (int i = 0; i < p.Length; i++)
            {
                double g = grad[i] * Scale;
                p[i] *= 1 - Lr * decay;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                double denominator = Math.Sqrt(v[i]) / Math.Sqrt(1 - Math.Pow(0.99, t)) + Eps;
                p[i] -= Lr / (1 - Math.Pow(0.9, t)) * m[i] / denominator;
            }
        }
        for (int s = 0; s < 3; s++) { Update(w, mw, vw, GradW[s], Decay, s + 1); Update(b, mb, vb, GradB[s], 0, s + 1); }
        var (W, B) = Run("adamw_torch", gradScale: Scale);
        AssertClose(w, W);
        AssertClose(b, B);
    }

    [Theory]
    [InlineData("adamw_torch")]
    [InlineData("sgd")]
    [InlineData("lion_32bit")]
    [InlineData("adafactor")]
    public void A_bf16_parameter_is_updated_through_an_fp32_master_copy(string name)
    {
        using var scope = NewDisposeScope();
        var options = new TrainingOptions { LearningRate = Lr, WeightDecay = Decay, Beta1 = 0.9, Beta2 = 0.99 };
        var twin = new Parameter(tensor(W0.Select(v => (float)v).ToArray(), [2, 3]).to(ScalarType.BFloat16).to(ScalarType.Float32));
        var low = new Parameter(tensor(W0.Select(v => (float)v).ToArray(), [2, 3]).to(ScalarType.BFloat16));
        using var reference = TrainingOptimizer.Create(name, [("layer.weight", twin)], options);
        using var mixed = TrainingOptimizer.Create(name, [("layer.weight", low)], options);
        for (int step = 0; step < 3; step++)
        {
            // Two micro-batches: the bf16 gradients are summed in fp32, as the fp32 twin's are.
            var halves = new[] { 0.25, 0.75 }.Select(f => tensor(GradW[step].Select(v => (float)(v * f)).ToArray(), [2, 3]).to(ScalarType.BFloat16)).ToArray();
            twin.grad = halves[0].to(ScalarType.Float32) + halves[1].to(ScalarType.Float32);
            low.grad = halves[0].clone();
            mixed.CollectGradients();
            low.grad.add_(halves[1]);
            Assert.Equal(reference.GradNorm(), mixed.GradNorm(), 6);
            reference.Step(Lr, 0.9); mixed.Step(Lr, 0.9);
            reference.ZeroGrad(); mixed.ZeroGrad();
            Assert.Equal(ScalarType.BFloat16, low.dtype);
            // The parameter is the master rounded to bf16, so it equals the fp32 twin rounded.
            Assert.Equal(twin.to(ScalarType.BFloat16).to(ScalarType.Float32).data<float>().ToArray(), low.to(ScalarType.Float32).data<float>().ToArray());
        }
    }

    [Fact]
    public void Updates_below_bf16_resolution_accumulate_in_the_master_copy()
    {
        using var scope = NewDisposeScope();
        // 1.0 in bf16 is followed by 1.0078125: steps of 1e-3 each vanish in bf16, but ten of them move the master past it.
        var p = new Parameter(ones(4, dtype: ScalarType.BFloat16));
        using var sgd = TrainingOptimizer.Create("sgd", [("x.bias", p)], new TrainingOptions { LearningRate = 1e-3 });
        for (int i = 0; i < 10; i++)
        {
            p.grad = full(4, -1f, dtype: ScalarType.BFloat16);
            sgd.Step(1e-3);
        }
        Assert.All(p.to(ScalarType.Float32).data<float>().ToArray(), v => Assert.Equal(1.0078125f, v));
    }

    [Fact]
    public void Without_fp32_masters_a_bf16_parameter_keeps_its_adamw_state_in_bf16_and_loses_tiny_updates()
    {
        // Axolotl's bfloat16: true, as torch's AdamW treats a bf16 parameter: moments in bf16, no master copy.
        using var scope = NewDisposeScope();
        var options = new TrainingOptions { LearningRate = Lr, WeightDecay = Decay, Beta1 = 0.9, Beta2 = 0.99, Fp32Masters = false };
        var w = new Parameter(tensor(W0.Select(v => (float)v).ToArray(), [2, 3]).to(ScalarType.BFloat16));
        using var adamw = TrainingOptimizer.Create("adamw_torch", [("layer.weight", w)], options);
        using var withMasters = TrainingOptimizer.Create("adamw_torch", [("layer.weight", new Parameter(w.detach().clone()))], options with { Fp32Masters = true });
        Assert.Equal(6 * 2 * 2, adamw.StateBytes);          // two bf16 moments
        Assert.Equal(6 * 2 * 4, withMasters.StateBytes);    // two fp32 moments (the fp32 master comes on top)
        // Element by element in doubles, rounding to bf16 wherever torch stores a bf16 tensor.
        static double Bf16(double x) => tensor(new[] { (float)x }).to(ScalarType.BFloat16).to(ScalarType.Float32).item<float>();
        var weight = W0.Select(Bf16).ToArray();
        var m = new double[6];
        var v = new double[6];
        for (int step = 1; step <= 3; step++)
        {
            var g = GradW[step - 1].Select(Bf16).ToArray();
            w.grad = tensor(g.Select(x => (float)x).ToArray(), [2, 3]).to(ScalarType.BFloat16);
            adamw.Step(Lr);
            adamw.ZeroGrad();
            for (int i = 0; i < 6; i++)
            {
                weight[i] = Bf16(weight[i] * (1 - Lr * Decay));
                m[i] = Bf16(Bf16(m[i] * 0.9) + 0.1 * g[i]);
                v[i] = Bf16(Bf16(v[i] * 0.99) + 0.01 * g[i] * g[i]);
                double denominator = Bf16(Bf16(Bf16(Math.Sqrt(v[i])) / Math.Sqrt(1 - Math.Pow(0.99, step))) + 1e-8);
                weight[i] = Bf16(weight[i] - Lr / (1 - Math.Pow(0.9, step)) * m[i] / denominator);
            }
            Assert.Equal(ScalarType.BFloat16, w.dtype);
            var got = w.to(ScalarType.Float32).data<float>().ToArray();
            for (int i = 0; i < 6; i++) Assert.True(Math.Abs(got[i] - weight[i]) <= Math.Abs(weight[i]) / 128, $"step {step}, element {i}: {got[i]} vs {weight[i]}");
        }
        // What the fp32 masters are for: steps below bf16's resolution vanish without them.
        var p = new Parameter(ones(4, dtype: ScalarType.BFloat16));
        using var sgd = TrainingOptimizer.Create("sgd", [("x.bias", p)], new TrainingOptions { LearningRate = 1e-3, Fp32Masters = false });
        for (int i = 0; i < 10; i++)
        {
            p.grad = full(4, -1f, dtype: ScalarType.BFloat16);
            sgd.Step(1e-3);
        }
        Assert.All(p.to(ScalarType.Float32).data<float>().ToArray(), x => Assert.Equal(1f, x));
    }

    [Fact]
    public void Resuming_fp32_master_state_without_masters_is_one_sentence()
    {
        using var scope = NewDisposeScope();
        var w = new Parameter(ones(2, 3, dtype: ScalarType.BFloat16));
        var options = new TrainingOptions { LearningRate = Lr };
        using var withMasters = TrainingOptimizer.Create("adamw_torch", [("layer.weight", w)], options);
        w.grad = full(2, 3, 0.5f, dtype: ScalarType.BFloat16);
        withMasters.Step(Lr);
        var stream = new MemoryStream();
        withMasters.Save(new BinaryWriter(stream));
        stream.Position = 0;
        using var pure = TrainingOptimizer.Create("adamw_torch", [("layer.weight", w)], options with { Fp32Masters = false });
        var error = Assert.Throws<UserError>(() => pure.Load(new BinaryReader(stream)));
        Assert.Contains("resume with the settings it was trained with", error.Message);
    }

    [Theory]
    [InlineData("adamw_torch")]
    [InlineData("sgd")]
    [InlineData("adafactor")]
    [InlineData("lion_32bit")]
    public void Saved_state_resumes_exactly(string name)
    {
        var (w, b) = Run(name);
        var (w2, b2) = Run(name, saveAndReloadAfterFirst: true);
        Assert.Equal(w, w2);
        Assert.Equal(b, b2);
        Assert.NotEqual(W0.Select(v => (float)v), w);
    }
}

public class OptimizerConfigTests
{
    const string Minimal = "base_model: some/model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\nlearning_rate: 0.0002\n";

    static Axolotl.Config.AxolotlConfig Parse(string extra) => Axolotl.Config.ConfigLoader.Parse(Minimal + extra, "cfg.yml");

    [Theory]
    [InlineData("sgd")]
    [InlineData("adafactor")]
    [InlineData("lion_32bit")]
    public void Implemented_optimizers_load_without_warnings(string name)
    {
        var c = Parse($"optimizer: {name}\ncosine_min_lr_ratio: 0.1\ncosine_constant_lr_ratio: 0.8\n");
        Assert.Equal(name, c.Optimizer);
        Assert.Equal((0.1, 0.8), (c.CosineMinLrRatio, c.CosineConstantLrRatio));
        Assert.Empty(c.Warnings);
    }

    [Fact]
    public void Eight_bit_and_paged_lion_run_as_lion_32bit_with_a_warning_and_optim_args_is_warned()
    {
        var c = Parse("optimizer: paged_lion_8bit\noptim_args: \"amsgrad=true\"\n");
        Assert.Equal("lion_32bit", c.Optimizer);
        Assert.Equal("paged_lion_8bit → lion_32bit", c.Sources["optimizer"]);
        Assert.Equal(2, c.Warnings.Count);
        Assert.StartsWith("cfg.yml:6:1: 'optimizer: paged_lion_8bit' is Lion with 8-bit or paged GPU state; lion_32bit runs instead", c.Warnings[0]);
        Assert.StartsWith("cfg.yml:7:1: 'optim_args: amsgrad=true' is read by transformers only for", c.Warnings[1]);
    }

    [Fact]
    public void Ratios_out_of_range_are_user_errors()
    {
        var e = Assert.Throws<UserError>(() => Parse("cosine_min_lr_ratio: 1.5\n"));
        Assert.Equal("cfg.yml: 'cosine_min_lr_ratio' must be in [0, 1].", e.Message);
    }
}
