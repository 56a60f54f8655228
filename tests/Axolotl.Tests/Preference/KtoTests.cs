using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Recipes;
using Axolotl.Training.Objectives;
using static TorchSharp.torch;

namespace Axolotl.Tests.Preference;

/// <summary>
/// rl: kto. The loss and metrics against numbers worked by hand from TRL 1.8's kto_trainer.py formulas, the KL pairing
/// against TRL's _get_kl_dataset rule, and a 2-step <c>axolotl train</c> of examples/kto.yml where the fresh adapter
/// makes policy and reference equal at step 1.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class KtoTests
{
    sealed class Quiet : IRecipeReporter;

    // β 0.1, w_d 1, w_u 1.5; examples [desirable, undesirable, desirable].
    static KtoObjective Objective() => new(null!, 0.1, 1.0, 1.5, _ => throw new InvalidOperationException());

    [Fact]
    public void Loss_and_metrics_match_hand_computed_values()
    {
        using var scope = NewDisposeScope();
        // policy log p: [-10, -12, -8]; reference [-11, -11, -9] → log ratios [1, -1, 1].
        // KL rows: policy [-20, -15, -18], reference [-22, -16, -18] → differences [2, 1, 0], KL estimate 1.
        var logps = tensor(new[] { -10.0, -12.0, -8.0 }, dtype: ScalarType.Float64).requires_grad_(true);
        var (loss, metrics) = Objective().Loss(logps, [-20, -15, -18], [-11, -11, -9, -22, -16, -18], [true, false, true]);
        // desirable: 1 − σ(0.1·(1 − 1)) = 0.5 each; undesirable: 1.5·(1 − σ(0.1·(1 − (−1)))) = 1.5·(1 − σ(0.2)).
        double sigma02 = 1 / (1 + Math.Exp(-0.2));
        Assert.Equal(0.5 + 0.5 + 1.5 * (1 - sigma02), loss.item<double>(), 12);
        Assert.Equal(1.675249004031283, loss.item<double>(), 12);
        // Metrics are batch means passed as mean × 3 examples.
        Assert.Equal(3.0, metrics["kl"], 12);
        Assert.Equal(0.1 * 3, metrics["rewards/chosen"], 12);
        Assert.Equal(-0.1 * 3, metrics["rewards/rejected"], 12);
        Assert.Equal(0.2 * 3, metrics["rewards/margins"], 12);
        Assert.Equal(-9.0 * 3, metrics["logps/chosen"], 12);
        Assert.Equal(-12.0 * 3, metrics["logps/rejected"], 12);
        // d/dx of 1 − σ(β(x − z)) at x − z = 0 is −β/4; of w_u(1 − σ(β(z − x))) at z − x = 2 it is w_u·β·σ(0.2)(1 − σ(0.2)).
        loss.backward();
        var grad = logps.grad!.data<double>().ToArray();
        Assert.Equal(-0.025, grad[0], 12);
        Assert.Equal(1.5 * 0.1 * sigma02 * (1 - sigma02), grad[1], 12);
        Assert.Equal(-0.025, grad[2], 12);
    }

    [Fact]
    public void Negative_kl_estimate_is_clamped_to_zero_and_missing_sides_are_not_logged()
    {
        using var scope = NewDisposeScope();
        var logps = tensor(new[] { -5.0, -6.0 }, dtype: ScalarType.Float64);
        // KL differences [-1, -3]: the estimate −2 is clamped to 0; log ratios [0, 0] → each desirable loses 1 − σ(0) = 0.5.
        var (loss, metrics) = Objective().Loss(logps, [-10, -12], [-5, -6, -9, -9], [true, true]);
        Assert.Equal(1.0, loss.item<double>(), 12);
        Assert.Equal(0.0, metrics["kl"], 12);
        Assert.False(metrics.ContainsKey("rewards/rejected"));
        Assert.False(metrics.ContainsKey("rewards/margins"));
    }

    [Fact]
    public void Kl_completions_rotate_by_one_within_each_chunk_as_trl_does()
    {
        var examples = Enumerable.Range(0, 5).Select(i => new KtoExample([1, 100 + i], [200 + i, 2], i % 2 == 0)).ToList();
        var batches = new KtoBatches(KtoDataset.Flatten(examples), batchSize: 2, klChunk: 2, padTokenId: 0, maxLength: null);
        // TRL maps batches of 2: [y0, y1] → [y1, y0], [y2, y3] → [y3, y2], the lone last [y4] keeps its own.
        Assert.Equal(new[] { 201, 200, 203, 202, 204 }, batches.KlCompletions.Select(c => c[0]));
        var first = batches.Epoch(0)[0];
        Assert.Equal(4, first.Rows);
        Assert.Equal(new[] { true, false }, first.Desirable);
        // Row 2 is prompt 0 with completion 1, labels on the completion only.
        Assert.Equal(new long[] { 1, 100, 201, 2 }, first.InputIds.Skip(2 * first.Length).Take(4));
        Assert.Equal(new long[] { -100, -100, 201, 2 }, first.Labels.Skip(2 * first.Length).Take(4));
        Assert.Equal(3, batches.BatchesPerEpoch);
    }

    static string RepoRoot()
    {
        var dir = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(dir, "Axolotl.sln"))) dir = Path.GetDirectoryName(dir)!;
        return dir;
    }

    static AxolotlConfig ExampleConfig(TempDir dir, params string[] overrides)
    {
        var root = RepoRoot();
        var yaml = File.ReadAllText(Path.Combine(root, "examples", "kto.yml"))
            .Replace("examples/", Path.Combine(root, "examples") + "/").Replace("outputs/kto", dir["out"]);
        return ConfigLoader.Parse(yaml, "kto.yml", overrides);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Kto_example_trains_two_steps_from_the_reference(bool precompute)
    {
        using var dir = TestSetup.TempDir();
        var config = ExampleConfig(dir, "--max-steps", "2", "--micro-batch-size", "4", "--sequence-len", "256",
            "--val-set-size", "4", "--eval-steps", "2", "--logging-steps", "1", "--bf16", "false", "--warmup-ratio", "0",
            "--precompute-ref-log-probs", precompute ? "true" : "false");
        var result = FinetuneRecipe.Run(config, new Quiet());
        var logs = result.State.LogHistory;
        var first = logs.First(e => e["kl"] != null && e["loss"] != null);
        // A fresh adapter (B = 0) is the reference: every log ratio and the KL estimate are 0, each example loses 1 − σ(0).
        Assert.Equal(0.5, (double)first["loss"]!, 6);
        Assert.Equal(0.0, (double)first["kl"]!, 6);
        foreach (var key in new[] { "rewards/chosen", "rewards/rejected", "rewards/margins" })
            if (first[key] != null) Assert.Equal(0.0, (double)first[key]!, 6);
        Assert.True(first["logps/chosen"] != null || first["logps/rejected"] != null);
        // Step 1 moved the adapter (no warmup): at step 2 the policy differs from the reference, the loss from 0.5.
        var second = logs.Last(e => e["loss"] != null && e["kl"] != null);
        Assert.NotEqual(0.5, (double)second["loss"]!, 6);
        Assert.Contains(logs, e => e["eval_loss"] != null && e["eval_kl"] != null);
        Assert.True(File.Exists(Path.Combine(dir["out"], "adapter_model.safetensors")));
        Assert.Contains("KTO, beta 0.1", File.ReadAllText(Path.Combine(dir["out"], "README.md")));
    }

    [Fact]
    public void Kto_needs_two_examples_per_batch()
    {
        using var dir = TestSetup.TempDir();
        var e = Assert.Throws<UserError>(() => ExampleConfig(dir, "--micro-batch-size", "1"));
        Assert.Contains("micro_batch_size", e.Message);
    }
}
