using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training.Objectives;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Tests.Preference;

/// <summary>
/// The preference objective on the reference tiny Llama (fp32). The independent computation is TRL's own recipe written
/// out with plain tensor ops: full [rows, length, vocab] logits, log_softmax, gather, the completion mask, the loss
/// formula of dpo_trainer.py, and autograd for the gradient; the objective under test never materialises full logits
/// and builds its gradient chunk by chunk.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class PreferenceObjectiveTests
{
    static CausalLM Model() => CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);

    static Batch Pairs()
    {
        var random = new Random(7);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, 512)).ToArray();
        var pairs = new[]
        {
            new PreferenceExample([1, .. Ids(6)], Ids(5), Ids(3)),
            new PreferenceExample([1, .. Ids(3)], Ids(2), Ids(7)),
            new PreferenceExample([1, .. Ids(9)], Ids(4), Ids(4)),
        };
        return PreferenceTokenization.Collate(pairs, padTokenId: 0, maxLength: 14);
    }

    /// <summary>Each row's Σ log p(label) over its completion, from full logits (TRL's selective_log_softmax + mask).</summary>
    static Tensor FullLogps(CausalLM lm, Batch b)
    {
        var ids = tensor(b.InputIds, [b.Rows, b.Length]);
        var labels = tensor(b.Labels, [b.Rows, b.Length]);
        var logits = lm.forward(ids).narrow(1, 0, b.Length - 1);
        var target = labels.narrow(1, 1, b.Length - 1);
        var mask = target.ne(-100);
        var perToken = F.log_softmax(logits, -1).gather(2, target.clamp_min(0).unsqueeze(2)).squeeze(2);
        return (perToken * mask).sum(1);
    }

    [Fact]
    public void Sequence_log_probs_and_their_gradient_match_full_logits()
    {
        var lm = Model();
        var b = Pairs();
        var g = new[] { 0.3, -1.2, 0.7, 2.0, -0.5, 1.1 };
        using var ours = SequenceLogProbs.Compute(lm, tensor(b.InputIds, [b.Rows, b.Length]), tensor(b.Labels, [b.Rows, b.Length]), withGradients: true);
        ours.Backward(g);
        var oursGrad = lm.parameters().Select(p => p.grad!.clone()).ToList();
        foreach (var p in lm.parameters()) p.grad = null;

        var full = FullLogps(lm, b);
        (full * tensor(g, dtype: ScalarType.Float32)).sum().backward();
        var expected = full.detach().data<float>().ToArray();
        for (int r = 0; r < b.Rows; r++) Assert.Equal(expected[r], ours.Sums[r], 4);
        Assert.Equal(b.Labels.Chunk(b.Length).Select(row => (long)row.Skip(1).Count(l => l != -100)), ours.Tokens);
        foreach (var (p, mine) in lm.parameters().Zip(oursGrad))
            Assert.True(allclose(mine, p.grad!, rtol: 1e-4, atol: 1e-6), "gradients differ");
    }

    [Fact]
    public void Dpo_starts_at_ln2_when_the_policy_is_the_reference()
    {
        var lm = Model();
        Lora.Apply(lm, new LoraSettings { Rank = 4, Alpha = 8, TargetModules = Lora.LinearModuleNames(lm) });
        var objective = new PreferenceObjective(lm, new PreferenceSettings(), PreferenceObjective.AdapterDisabledReference(lm));
        var b = Pairs();
        var output = objective.ForwardBackward(b, scale: 1.0 / objective.Units(b));
        Assert.Equal(3, objective.Units(b));
        Assert.Equal(Math.Log(2), output.LossSum / 3, 6);
        Assert.Equal(0, output.MetricSums!["rewards/margins"], 6);
        Assert.All(Lora.Layers(lm), l => Assert.False(l.Layer.Disabled));
        // The first step's gradient reaches the adapters: B gets one, as TRL's first DPO step does.
        Assert.Contains(Lora.Layers(lm), l => l.Layer.lora_B.weight.grad is { } grad && grad.abs().sum().item<float>() > 0);
    }

    [Fact]
    public void Dpo_trajectory_matches_trl_math_on_full_logits()
    {
        const double beta = 0.1, lr = 0.05;
        var b = Pairs();
        int pairs = b.Rows / 2;

        (List<double> Loss, List<double> Margins) Run(bool useObjective)
        {
            using var _ = NewDisposeScope();
            manual_seed(3);
            var lm = Model();
            Lora.Apply(lm, new LoraSettings { Rank = 4, Alpha = 8, TargetModules = Lora.LinearModuleNames(lm) });
            var trainable = lm.parameters().Where(p => p.requires_grad).ToList();
            var objective = new PreferenceObjective(lm, new PreferenceSettings { Beta = beta }, PreferenceObjective.AdapterDisabledReference(lm));
            var (losses, margins) = (new List<double>(), new List<double>());
            for (int step = 0; step < 4; step++)
            {
                foreach (var p in trainable) p.grad = null;
                if (useObjective)
                {
                    var o = objective.ForwardBackward(b, 1.0 / pairs);
                    losses.Add(o.LossSum / pairs);
                    margins.Add(o.MetricSums!["rewards/margins"] / pairs);
                }
                else
                {
                    Tensor reference;
                    using (no_grad())
                    using (Lora.Disable(lm)) reference = FullLogps(lm, b);
                    var policy = FullLogps(lm, b);
                    var chosen = policy.narrow(0, 0, pairs) - reference.narrow(0, 0, pairs);
                    var rejected = policy.narrow(0, pairs, pairs) - reference.narrow(0, pairs, pairs);
                    var loss = -F.logsigmoid(beta * (chosen - rejected)).mean();
                    loss.backward();
                    losses.Add(loss.item<float>());
                    margins.Add((beta * (chosen - rejected)).mean().item<float>());
                }
                using (no_grad())
                    foreach (var p in trainable) p.sub_(p.grad! * lr);
            }
            return (losses, margins);
        }

        var ours = Run(useObjective: true);
        var expected = Run(useObjective: false);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(expected.Loss[i], ours.Loss[i], 5);
            Assert.Equal(expected.Margins[i], ours.Margins[i], 5);
        }
        Assert.True(ours.Margins[^1] > ours.Margins[1], "rewards/margins should grow under DPO");
    }

    [Theory]
    [InlineData("simpo")]
    [InlineData("orpo")]
    public void Simpo_and_orpo_match_their_formulas_on_full_logits(string method)
    {
        const double beta = 0.2, gamma = 0.5, cpoAlpha = 1.0;
        var lm = Model();
        var b = Pairs();
        int pairs = b.Rows / 2;
        var output = new PreferenceObjective(lm, new PreferenceSettings { Method = Enum.Parse<Axolotl.Config.RlMethod>(method, ignoreCase: true), Beta = beta, SimpoGamma = gamma, CpoAlpha = cpoAlpha }, null).Forward(b);
        double[] sums;
        using (no_grad()) sums = FullLogps(lm, b).to(ScalarType.Float64).data<double>().ToArray();
        var tokens = b.Labels.Chunk(b.Length).Select(row => (double)row.Skip(1).Count(l => l != -100)).ToArray();
        double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));
        double nll = -sums.Take(pairs).Sum() / tokens.Take(pairs).Sum();
        double expected = 0;
        for (int i = 0; i < pairs; i++)
        {
            double c = sums[i] / tokens[i], r = sums[pairs + i] / tokens[pairs + i];
            expected += method == "simpo"
                ? -LogSigmoid(beta * (c - r - gamma / beta)) / pairs
                : -beta * LogSigmoid(c - r - (Math.Log(1 - Math.Exp(c)) - Math.Log(1 - Math.Exp(r)))) / pairs;
        }
        expected += method == "simpo" ? cpoAlpha * nll : nll;
        Assert.Equal(expected, output.LossSum / pairs, 5);
        Assert.Equal(nll, output.MetricSums!["nll_loss"] / pairs, 5);
        Assert.Equal(Enumerable.Range(0, pairs).Average(i => beta * sums[i] / tokens[i]), output.MetricSums["rewards/chosen"] / pairs, 5);
    }
}
