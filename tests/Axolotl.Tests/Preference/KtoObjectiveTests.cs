using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training.Objectives;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Tests.Preference;

/// <summary>
/// KtoObjective on the reference tiny Llama (fp32) against TRL's recipe written out with plain tensor ops: full logits,
/// log_softmax, gather, the completion mask, kto_trainer.py's loss, and autograd for the parameters' gradient.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class KtoObjectiveTests
{
    static Batch Examples()
    {
        var random = new Random(11);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, 512)).ToArray();
        var examples = new[] { new KtoExample([1, .. Ids(5)], Ids(4), true), new KtoExample([1, .. Ids(3)], Ids(6), false), new KtoExample([1, .. Ids(7)], Ids(3), true) };
        return new KtoBatches(KtoDataset.Flatten(examples), batchSize: 3, klChunk: 3, padTokenId: 0, maxLength: 14).Epoch(0)[0];
    }

    static Tensor FullLogps(CausalLM lm, Batch b)
    {
        var ids = tensor(b.InputIds, [b.Rows, b.Length]);
        var labels = tensor(b.Labels, [b.Rows, b.Length]);
        var logits = lm.forward(ids).narrow(1, 0, b.Length - 1);
        var target = labels.narrow(1, 1, b.Length - 1);
        var perToken = F.log_softmax(logits, -1).gather(2, target.clamp_min(0).unsqueeze(2)).squeeze(2);
        return (perToken * target.ne(-100)).sum(1).to(ScalarType.Float64);
    }

    [Fact]
    public void Loss_and_gradient_match_trl_recipe_on_full_logits()
    {
        using var scope = NewDisposeScope();
        var lm = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        var b = Examples();
        // A reference placed at known offsets from the policy: main log ratios [0.5, −0.3, 0.2], KL rows' differences
        // [1, 2, 0.5] (estimate 7/6).
        double[] offsets = [0.5, -0.3, 0.2, 1, 2, 0.5];
        double[] policy;
        using (no_grad()) policy = FullLogps(lm, b).data<double>().ToArray();
        var reference = policy.Zip(offsets, (p, o) => p - o).ToArray();
        const double beta = 0.1, wd = 1.0, wu = 1.33;

        var objective = new KtoObjective(lm, beta, wd, wu, _ => reference);
        var output = objective.ForwardBackward(b, scale: 1.0);
        var oursGrad = lm.parameters().Select(p => p.grad!.clone()).ToList();
        foreach (var p in lm.parameters()) p.grad = null;

        var full = FullLogps(lm, b);
        double kl = (1 + 2 + 0.5) / 3.0;
        var r = full.narrow(0, 0, 3) - tensor(reference[..3], dtype: ScalarType.Float64);
        var expected = wd * (1 - F.sigmoid(beta * (r[0] - kl))) + wu * (1 - F.sigmoid(beta * (kl - r[1]))) + wd * (1 - F.sigmoid(beta * (r[2] - kl)));
        expected.backward();
        Assert.Equal(expected.item<double>(), output.LossSum, 5);
        // By hand: 1 − σ(0.1·(0.5 − 7/6)) + 1.33·(1 − σ(0.1·(7/6 + 0.3))) + 1 − σ(0.1·(0.2 − 7/6)).
        Assert.Equal(1.6571289265913554, output.LossSum, 4);
        Assert.Equal(3 * kl, output.MetricSums!["kl"], 4);
        var expectedGrad = lm.parameters().Select(p => p.grad!).ToList();
        for (int i = 0; i < oursGrad.Count; i++)
            Assert.True(oursGrad[i].allclose(expectedGrad[i], rtol: 1e-3, atol: 1e-6), $"parameter {i}: gradient differs");
    }
}
