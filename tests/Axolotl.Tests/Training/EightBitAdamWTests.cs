using System.Text.Json.Nodes;
using Axolotl.Quantization;
using Axolotl.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>
/// adamw_bnb_8bit / adamw_8bit / paged_adamw_8bit against bitsandbytes' rule written out here: AdamW on moments kept as
/// one byte per element (the dynamic map, signed for exp_avg and unsigned for exp_avg_sq, absmax per block of 256), and
/// fp32 moments for tensors under 4096 elements.
/// </summary>
public class EightBitAdamWTests
{
    const double Lr = 0.01, Beta1 = 0.9, Beta2 = 0.99, Eps = 1e-8, Decay = 0.1;
    const int Rows = 50, Cols = 100; // 5000 elements: 8-bit state, with a short last block (5000 = 19 × 256 + 136)

    static float[] Values(int n, int seed)
    {
        // Magnitudes over four decades, so the codes span the map's exponents.
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)((r.NextDouble() * 2 - 1) * Math.Pow(10, -r.Next(0, 4)))).ToArray();
    }

    static readonly float[] W0 = Values(Rows * Cols, 1), B0 = Values(100, 2);
    static readonly float[][] GradW = [Values(Rows * Cols, 3), Values(Rows * Cols, 4), Values(Rows * Cols, 5)];
    static readonly float[][] GradB = [Values(100, 6), Values(100, 7), Values(100, 8)];

    /// <summary>bnb's quantize_blockwise written out: absmax per 256, x × (1/absmax), the number of code midpoints below it.</summary>
    static (byte[] Codes, float[] Absmax) Quantize(double[] x, float[] map)
    {
        var midpoints = Enumerable.Range(0, 255).Select(k => (map[k] + map[k + 1]) / 2f).ToArray();
        int blocks = (x.Length + 255) / 256;
        var codes = new byte[x.Length];
        var absmax = new float[blocks];
        for (int b = 0; b < blocks; b++)
        {
            int from = b * 256, to = Math.Min(x.Length, from + 256);
            for (int i = from; i < to; i++) absmax[b] = Math.Max(absmax[b], Math.Abs((float)x[i]));
            float inverse = 1f / Math.Max(absmax[b], 1e-38f);
            for (int i = from; i < to; i++)
            {
                float s = Math.Clamp((float)x[i] * inverse, -1f, 1f);
                codes[i] = (byte)midpoints.Count(m => m < s);
            }
        }
        return (codes, absmax);
    }

    static double[] Dequantize((byte[] Codes, float[] Absmax) q, float[] map) =>
        q.Codes.Select((c, i) => (double)(map[c] * q.Absmax[i / 256])).ToArray();

    /// <summary>AdamW on doubles; with <paramref name="quantized"/> the moments are stored through the 8-bit codes between steps.</summary>
    static (double[] W, (byte[], float[]) M, (byte[], float[]) V) Reference(int steps, bool quantized)
    {
        int n = Rows * Cols;
        double[] w = [.. W0.Select(v => (double)v)], m = new double[n], v = new double[n];
        (byte[], float[]) qm = default, qv = default;
        for (int t = 1; t <= steps; t++)
        {
            var g = GradW[t - 1];
            double c1 = 1 - Math.Pow(Beta1, t), c2 = Math.Sqrt(1 - Math.Pow(Beta2, t));
            for (int i = 0; i < n; i++)
            {
                m[i] = Beta1 * m[i] + (1 - Beta1) * g[i];
                v[i] = Beta2 * v[i] + (1 - Beta2) * g[i] * g[i];
                w[i] = w[i] * (1 - Lr * Decay) - Lr / c1 * m[i] / (Math.Sqrt(v[i]) / c2 + Eps);
            }
            if (!quantized) continue;
            (qm, qv) = (Quantize(m, Blockwise8Bit.DynamicMap), Quantize(v, Blockwise8Bit.UnsignedDynamicMap));
            (m, v) = (Dequantize(qm, Blockwise8Bit.DynamicMap), Dequantize(qv, Blockwise8Bit.UnsignedDynamicMap));
        }
        return (w, qm, qv);
    }

    sealed class Run : IDisposable
    {
        public readonly Parameter W = new(tensor(W0, [Rows, Cols])), B = new(tensor(B0));
        public TrainingOptimizer Optimizer;
        readonly string _name;
        static readonly TrainingOptions Options = new() { LearningRate = Lr, WeightDecay = Decay, Beta1 = Beta1, Beta2 = Beta2, Epsilon = Eps };

        public Run(string name) { _name = name; Optimizer = Create(); }
        TrainingOptimizer Create() => TrainingOptimizer.Create(_name, [("layer.weight", W), ("layer.bias", B)], Options);

        public void Steps(int from, int to)
        {
            for (int s = from; s < to; s++)
            {
                W.grad = tensor(GradW[s], [Rows, Cols]);
                B.grad = tensor(GradB[s]);
                Optimizer.Step(Lr);
                Optimizer.ZeroGrad();
            }
        }

        public void SaveAndReload()
        {
            var stream = new MemoryStream();
            Optimizer.Save(new BinaryWriter(stream));
            Optimizer.Dispose();
            Optimizer = Create();
            stream.Position = 0;
            Optimizer.Load(new BinaryReader(stream));
        }

        public void Dispose() { Optimizer.Dispose(); W.Dispose(); B.Dispose(); }
    }

    [Fact]
    public void The_first_step_is_adamw_and_stores_the_moments_as_blockwise_dynamic_codes()
    {
        using var scope = NewDisposeScope();
        using var run = new Run("adamw_bnb_8bit");
        run.Steps(0, 1);
        var (w, qm, qv) = Reference(1, quantized: true);
        // The update uses the fp32 moments before they are stored: exactly one AdamW step.
        var actual = run.W.data<float>().ToArray();
        for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(w[i] - actual[i]) < 1e-6, $"[{i}] {w[i]} vs {actual[i]}");
        var state = run.Optimizer.StateTensors(0);
        Assert.Equal([ScalarType.Byte, ScalarType.Float32, ScalarType.Byte, ScalarType.Float32], state.Select(t => t.dtype));
        Assert.Equal([5000L, 20L, 5000L, 20L], state.Select(t => t.numel()));
        AssertCodes(qm, state[0], state[1]);
        AssertCodes(qv, state[2], state[3]);
        // The bias (100 elements, under min_8bit_size) keeps fp32 moments.
        Assert.All(run.Optimizer.StateTensors(1), t => Assert.Equal((ScalarType.Float32, 100L), (t.dtype, t.numel())));
    }

    /// <summary>The codes agree but for values within float rounding of a midpoint (the reference computes in doubles).</summary>
    static void AssertCodes((byte[] Codes, float[] Absmax) expected, Tensor codes, Tensor absmax)
    {
        var actualCodes = codes.data<byte>().ToArray();
        int differing = actualCodes.Where((c, i) => c != expected.Codes[i]).Count();
        Assert.True(differing <= 5, $"{differing} of {actualCodes.Length} codes differ");
        Assert.All(actualCodes.Select((c, i) => Math.Abs(c - expected.Codes[i])), d => Assert.True(d <= 1));
        var actualAbsmax = absmax.data<float>().ToArray();
        for (int b = 0; b < actualAbsmax.Length; b++) Assert.True(Math.Abs(actualAbsmax[b] - expected.Absmax[b]) <= 1e-6 * expected.Absmax[b] + 1e-12, $"absmax[{b}]");
    }

    [Fact]
    public void Later_steps_read_the_dequantized_moments_and_differ_from_fp32_adamw()
    {
        using var scope = NewDisposeScope();
        using var run = new Run("adamw_8bit");
        run.Steps(0, 3);
        var actual = run.W.data<float>().ToArray();
        var (quantized, _, _) = Reference(3, quantized: true);
        var (full, _, _) = Reference(3, quantized: false);
        double errorToQuantized = actual.Select((a, i) => Math.Abs(a - quantized[i])).Max();
        double quantisationEffect = full.Select((f, i) => Math.Abs(f - quantized[i])).Max();
        Assert.True(errorToQuantized < 2e-5, $"max error {errorToQuantized} against the 8-bit rule");
        // The 8-bit state measurably changes the result, by far more than the agreement above.
        Assert.True(quantisationEffect > 20 * errorToQuantized, $"quantisation moved weights by {quantisationEffect}, error {errorToQuantized}");
    }

    [Fact]
    public void State_takes_a_quarter_of_fp32_adamws_bytes()
    {
        using var scope = NewDisposeScope();
        using var eight = new Run("paged_adamw_8bit");
        using var fp32 = new Run("adamw_torch");
        // W: 2 bytes per element + two fp32 absmax per block of 256; B: fp32 m and v.
        Assert.Equal(2 * 5000 + 2 * 20 * 4 + 2 * 100 * 4, eight.Optimizer.StateBytes);
        Assert.Equal(2 * 5100 * 4, fp32.Optimizer.StateBytes);
        double ratio = (2 * 5000 + 2 * 20 * 4) / (2.0 * 5000 * 4);
        Assert.InRange(ratio, 0.25, 0.26);
    }

    [Fact]
    public void Saved_state_resumes_exactly()
    {
        using var scope = NewDisposeScope();
        using var straight = new Run("adamw_bnb_8bit");
        straight.Steps(0, 3);
        using var resumed = new Run("adamw_bnb_8bit");
        resumed.Steps(0, 1);
        resumed.SaveAndReload();
        resumed.Steps(1, 3);
        Assert.Equal(straight.W.data<float>().ToArray(), resumed.W.data<float>().ToArray());
        Assert.Equal(straight.B.data<float>().ToArray(), resumed.B.data<float>().ToArray());
        for (int k = 0; k < 4; k++) Assert.True(straight.Optimizer.StateTensors(0)[k].equal(resumed.Optimizer.StateTensors(0)[k]).all().item<bool>());
    }

    [Fact]
    public void Train_runs_two_steps_and_its_checkpoint_holds_about_a_quarter_of_the_optimizer_bytes()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["alpaca.json"], """
            [{"instruction": "Say hi.", "input": "", "output": "hi there"},
             {"instruction": "Name a colour.", "input": "", "output": "Blue"}]
            """);
        long OptimizerBytes(string optimizer)
        {
            var config = dir[$"{optimizer}.yml"];
            File.WriteAllText(config, $"""
                base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
                tokenizer_config: {TestSetup.Data("tok-tiny512")}
                datasets:
                  - path: {dir["alpaca.json"]}
                    type: alpaca
                sequence_len: 256
                micro_batch_size: 1
                max_steps: 2
                save_steps: 2
                warmup_steps: 0
                learning_rate: 0.001
                optimizer: {optimizer}
                bf16: false
                output_dir: {dir[optimizer]}
                """);
            Assert.Equal(0, Cli.Cli.Run(["train", config]));
            var losses = JsonNode.Parse(File.ReadAllText(Path.Combine(dir[optimizer], "trainer_state.json")))!["log_history"]!.AsArray()
                .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToList();
            Assert.All(losses, l => Assert.True(double.IsFinite(l)));
            return new FileInfo(Path.Combine(dir[optimizer], "checkpoint-2", CheckpointStore.OptimizerFile)).Length;
        }
        double ratio = (double)OptimizerBytes("adamw_bnb_8bit") / OptimizerBytes("adamw_torch");
        Assert.InRange(ratio, 0.25, 0.33); // norm weights (under 4096 elements) keep fp32 moments
    }

    [Fact]
    public void The_eight_bit_names_load_as_themselves_and_paging_is_warned()
    {
        const string Minimal = "base_model: m\ndatasets:\n  - path: d.jsonl\nlearning_rate: 0.001\n";
        foreach (var name in new[] { "adamw_bnb_8bit", "adamw_8bit" })
        {
            var c = Axolotl.Config.ConfigLoader.Parse(Minimal + $"optimizer: {name}\n", "c.yml");
            Assert.Equal(name, c.Optimizer);
            Assert.Empty(c.Warnings);
        }
        var paged = Axolotl.Config.ConfigLoader.Parse(Minimal + "optimizer: paged_adamw_8bit\n", "c.yml");
        Assert.Equal("paged_adamw_8bit", paged.Optimizer);
        Assert.Equal("c.yml:5:1: 'optimizer: paged_adamw_8bit' also pages its 8-bit state through CUDA unified memory; the same 8-bit AdamW runs here without paging (same math).", Assert.Single(paged.Warnings));
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)] // bfloat16: true, no fp32 master
    public void The_fused_cpu_step_matches_the_torch_composition(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        // 300 blocks and a short last one: several chunks over the threads.
        var generator = new Generator(3);
        var w0 = (0.1 * randn([256 * 300 + 77], generator: generator)).to(dtype);
        var grads = Enumerable.Range(0, 3).Select(_ => randn([256 * 300 + 77], generator: generator) * 0.01).ToList();
        (Tensor W, Tensor[] State) Run(bool fused)
        {
            var w = new Parameter(w0.clone(), requires_grad: true);
            var options = new TrainingOptions { LearningRate = Lr, WeightDecay = Decay, Beta1 = Beta1, Beta2 = Beta2, Epsilon = Eps, Fp32Masters = dtype != ScalarType.BFloat16 };
            using var optimizer = TrainingOptimizer.Create("adamw_8bit", [("layer.weight", w)], options);
            TrainingOptimizer.FusedAdamW8Bit.OffOnThisThread = !fused;
            try
            {
                foreach (var g in grads)
                {
                    w.grad = g.to(dtype).clone(); // a copy: zero_grad clears the gradient in place
                    optimizer.Step(Lr);
                    optimizer.ZeroGrad();
                }
            }
            finally { TrainingOptimizer.FusedAdamW8Bit.OffOnThisThread = false; }
            return (w.detach().to(ScalarType.Float32).clone(), optimizer.StateTensors(0).Select(t => t.clone()).ToArray());
        }
        var (fw, fs) = Run(fused: true);
        var (tw, ts) = Run(fused: false);
        double worst = (fw - tw).abs().max().item<float>() / tw.abs().max().item<float>();
        Assert.True(worst < (dtype == ScalarType.Float32 ? 1e-6 : 1e-2), $"weights differ by {worst} (relative to the largest)");
        for (int k = 0; k < 4; k += 2)
        {
            double sameCodes = (fs[k] == ts[k]).to(ScalarType.Float32).mean().item<float>();
            Assert.True(sameCodes > 0.999, $"only {sameCodes:P2} of state {k}'s codes equal");
            Assert.True((fs[k].to(ScalarType.Int32) - ts[k].to(ScalarType.Int32)).abs().max().item<int>() <= 1);
            Assert.True(fs[k + 1].allclose(ts[k + 1], rtol: 1e-5, atol: 0), $"absmax {k + 1} differs");
        }
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void The_avx2_step_is_bit_identical_to_the_scalar_loops(ScalarType dtype)
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported) return; // the scalar loops are then the only path
        using var scope = NewDisposeScope();
        var generator = new Generator(4);
        // Blocks of 256 and a last one of 77 (a vector part and a scalar tail); moments across many decades.
        var w0 = (0.1 * randn([256 * 40 + 77], generator: generator)).to(dtype);
        var grads = Enumerable.Range(0, 4).Select(k => randn([256 * 40 + 77], generator: generator) * Math.Pow(10, -k)).ToList();
        (Tensor W, Tensor[] State) Run(bool scalar)
        {
            var w = new Parameter(w0.clone(), requires_grad: true);
            var options = new TrainingOptions { LearningRate = Lr, WeightDecay = Decay, Beta1 = Beta1, Beta2 = Beta2, Epsilon = Eps, Fp32Masters = dtype != ScalarType.BFloat16 };
            using var optimizer = TrainingOptimizer.Create("adamw_8bit", [("layer.weight", w)], options);
            TrainingOptimizer.FusedAdamW8Bit.ScalarOnThisThread = scalar;
            try
            {
                foreach (var g in grads)
                {
                    w.grad = g.to(dtype).clone();
                    optimizer.Step(Lr);
                    optimizer.ZeroGrad();
                }
            }
            finally { TrainingOptimizer.FusedAdamW8Bit.ScalarOnThisThread = false; }
            return (w.detach().clone(), optimizer.StateTensors(0).Select(t => t.clone()).ToArray());
        }
        var (vw, vs) = Run(scalar: false);
        var (sw, ss) = Run(scalar: true);
        Assert.True(vw.eq(sw).all().item<bool>(), "weights differ");
        for (int k = 0; k < 4; k++) Assert.True(vs[k].eq(ss[k]).all().item<bool>(), $"state {k} differs");
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(false, false)]
    [InlineData(true, true)] // the scalar loop (where AVX2 exists the vector one runs otherwise)
    [InlineData(false, true)]
    public void The_table_encoding_counts_the_midpoints_below_each_value_exactly(bool signed, bool scalar)
    {
        var bounds = signed ? TrainingOptimizer.FusedAdamW8Bit.SignedBounds : TrainingOptimizer.FusedAdamW8Bit.UnsignedBounds;
        var r = new Random(5);
        // Random values over the map's decades, each midpoint exactly and one float either side of it, zeros and the ends.
        var values = Enumerable.Range(0, 20000).Select(_ => (float)((r.NextDouble() * 2 - 1) * Math.Pow(10, -r.Next(0, 8))))
            .Concat(bounds).Concat(bounds.Select(b => MathF.BitIncrement(b))).Concat(bounds.Select(b => MathF.BitDecrement(b)))
            .Concat([0f, -0f, 1f, -1f, 0.99999f, -0.99999f]).Where(v => signed || v >= 0).ToArray();
        TrainingOptimizer.FusedAdamW8Bit.ScalarOnThisThread = scalar;
        byte[] codes;
        try { codes = TrainingOptimizer.FusedAdamW8Bit.Encode(values, signed); }
        finally { TrainingOptimizer.FusedAdamW8Bit.ScalarOnThisThread = false; }
        for (int i = 0; i < values.Length; i++)
            Assert.True(codes[i] == bounds.Count(m => m < values[i]), $"{values[i]:R}: code {codes[i]}, midpoints below {bounds.Count(m => m < values[i])}");
    }
}
