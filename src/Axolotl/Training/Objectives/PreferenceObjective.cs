using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Training.Objectives;

/// <summary>What an <c>rl:</c> run optimises, with TRL 1.8's defaults as Axolotl passes them.</summary>
internal sealed record PreferenceSettings
{
    /// <summary>dpo, ipo, simpo, orpo or kto.</summary>
    public RlMethod Method { get; init; } = RlMethod.Dpo;
    /// <summary>β: rl_beta (orpo_alpha for ORPO), default 0.1 as TRL's configs.</summary>
    public double Beta { get; init; } = 0.1;
    /// <summary>DPO's loss types (dpo_loss_type; ipo forces ["ipo"]) and their weights (dpo_loss_weights).</summary>
    public IReadOnlyList<string> LossTypes { get; init; } = ["sigmoid"];
    public IReadOnlyList<double>? LossWeights { get; init; }
    public double LabelSmoothing { get; init; }
    /// <summary>SimPO's target margin γ (TRL's CPOConfig default 0.5) and the weight of its BC term (cpo_alpha, default 1).</summary>
    public double SimpoGamma { get; init; } = 0.5;
    public double CpoAlpha { get; init; } = 1.0;
    /// <summary>KTO's loss weights (kto_desirable_weight, kto_undesirable_weight; TRL's default 1 each).</summary>
    public double DesirableWeight { get; init; } = 1.0;
    public double UndesirableWeight { get; init; } = 1.0;

    /// <summary>The settings of an rl config, with TRL 1.8's defaults where a key is unset (as Axolotl's builder passes them).</summary>
    public static PreferenceSettings FromConfig(Config.AxolotlConfig c) => new()
    {
        Method = c.Rl ?? RlMethod.Dpo,
        Beta = c.RlBeta ?? c.OrpoAlpha ?? 0.1, // Axolotl: rl_beta, else orpo_alpha (TRL reads ORPO's alpha as beta)
        LossTypes = c.Rl == RlMethod.Ipo ? ["ipo"] : c.DpoLossType is { Count: > 0 } types ? types : ["sigmoid"],
        LabelSmoothing = c.Rl == RlMethod.Dpo ? c.DpoLabelSmoothing ?? 0 : 0,
        SimpoGamma = c.SimpoGamma ?? 0.5,
        CpoAlpha = c.CpoAlpha ?? 1.0,
        // Axolotl passes `kto_desirable_weight or 1.0`: unset and 0 both mean 1.
        DesirableWeight = c.KtoDesirableWeight is double d and not 0 ? d : 1.0,
        UndesirableWeight = c.KtoUndesirableWeight is double u and not 0 ? u : 1.0,
    };

    /// <summary>The method in words, for the model card: "DPO (sigmoid loss), beta 0.1".</summary>
    public static string Describe(Config.AxolotlConfig c)
    {
        var s = FromConfig(c);
        return s.Method switch
        {
            RlMethod.Dpo or RlMethod.Ipo => $"{ConfigLoader.Spelling(s.Method).ToUpperInvariant()} ({string.Join(" + ", s.LossTypes)} loss), beta {s.Beta}",
            RlMethod.Kto => $"KTO, beta {s.Beta}, desirable_weight {s.DesirableWeight}, undesirable_weight {s.UndesirableWeight}",
            RlMethod.Simpo => $"SimPO, beta {s.Beta}, gamma {s.SimpoGamma}, cpo_alpha {s.CpoAlpha}",
            _ => $"ORPO, beta (orpo_alpha) {s.Beta}",
        };
    }

    /// <summary>Whether the loss compares against a reference model (DPO, IPO and KTO; SimPO and ORPO need none).</summary>
    public bool NeedsReference => Method is RlMethod.Dpo or RlMethod.Ipo or RlMethod.Kto;
}

/// <summary>
/// Preference training's objective over batches of [chosen rows; rejected rows] (see
/// <see cref="PreferenceTokenization.Collate"/>): one policy forward of both halves with gradients, one reference forward
/// without (the adapter-disabled model, a frozen copy, or log-probabilities computed before training), then TRL's loss
/// on the per-sequence log-probabilities. Units are pairs: the loop averages the loss and every metric over them, which
/// for equal micro-batches is TRL's mean of per-batch means. Metrics are named as TRL logs them.
/// </summary>
internal sealed class PreferenceObjective : ITrainingObjective
{
    readonly CausalLM _policy;
    readonly PreferenceSettings _s;
    readonly Func<Batch, double[]>? _reference;

    /// <param name="policy">The model being trained.</param>
    /// <param name="reference">Each row's reference log-probability for a batch (null for SimPO and ORPO); see
    /// <see cref="AdapterDisabledReference"/>, <see cref="FrozenReference"/> and <see cref="PrecomputedReference"/>.</param>
    public PreferenceObjective(CausalLM policy, PreferenceSettings settings, Func<Batch, double[]>? reference)
    {
        if (settings.NeedsReference && reference is null) throw new ArgumentException("DPO needs a reference", nameof(reference));
        if (settings.LossWeights is { } w && w.Count != settings.LossTypes.Count)
            throw new UserError($"dpo_loss_weights has {w.Count} weights for {settings.LossTypes.Count} dpo_loss_type entries; give one weight per loss type.");
        foreach (var type in settings.LossTypes)
            if (!PreferenceLosses.DpoLossTypes.Contains(type))
                throw new UserError($"dpo_loss_type '{type}' is not implemented; use one of {string.Join(", ", PreferenceLosses.DpoLossTypes)}.");
        _policy = policy;
        _s = settings;
        _reference = reference;
    }

    public long Units(Batch batch) => batch.Rows / 2;

    public ObjectiveOutput ForwardBackward(Batch batch, double scale)
    {
        using var scope = NewDisposeScope();
        var (ids, labels) = Tensors(batch);
        var reference = _s.NeedsReference ? _reference!(batch) : null;
        using var policy = SequenceLogProbs.Compute(_policy, ids, labels, withGradients: true);
        var leaf = tensor(policy.Sums, dtype: ScalarType.Float64).requires_grad_(true);
        var (loss, metrics) = Loss(leaf, policy, reference);
        (loss * scale).backward();
        policy.Backward(leaf.grad!.data<double>().ToArray());
        return new ObjectiveOutput(loss.item<double>(), metrics);
    }

    public ObjectiveOutput Forward(Batch batch)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, labels) = Tensors(batch);
        var reference = _s.NeedsReference ? _reference!(batch) : null;
        using var policy = SequenceLogProbs.Compute(_policy, ids, labels, withGradients: false);
        var (loss, metrics) = Loss(tensor(policy.Sums, dtype: ScalarType.Float64), policy, reference);
        return new ObjectiveOutput(loss.item<double>(), metrics);
    }

    (Tensor Ids, Tensor Labels) Tensors(Batch batch) =>
        (tensor(batch.InputIds, [batch.Rows, batch.Length], device: _policy.Device),
         tensor(batch.Labels, [batch.Rows, batch.Length], device: _policy.Device));

    /// <summary>The summed loss of the batch's pairs (a graph over <paramref name="logps"/>) and the metric sums.</summary>
    (Tensor Loss, Dictionary<string, double> Metrics) Loss(Tensor logps, SequenceLogProbs policy, double[]? reference)
    {
        int pairs = policy.Sums.Length / 2;
        var tokens = tensor(policy.Tokens.Select(t => (double)t).ToArray(), dtype: ScalarType.Float64);
        var chosen = logps.narrow(0, 0, pairs);
        var rejected = logps.narrow(0, pairs, pairs);
        var chosenTokens = tokens.narrow(0, 0, pairs);
        var rejectedTokens = tokens.narrow(0, pairs, pairs);
        double beta = _s.Beta;
        var metrics = new Dictionary<string, double>();

        // TRL's logits/chosen and logits/rejected: the mean logit over each half's completion tokens, as batch values.
        double MeanLogit(int from) =>
            policy.Tokens.Skip(from).Take(pairs).Sum() is var n and > 0 ? policy.LogitMeanSums.Skip(from).Take(pairs).Sum() / n : 0;

        Tensor loss;
        double[] chosenRewards, rejectedRewards;
        if (_s.Method is RlMethod.Dpo or RlMethod.Ipo)
        {
            var refChosen = tensor(reference!.Take(pairs).ToArray(), dtype: ScalarType.Float64);
            var refRejected = tensor(reference!.Skip(pairs).Take(pairs).ToArray(), dtype: ScalarType.Float64);
            loss = zeros(1, dtype: ScalarType.Float64).sum();
            for (int i = 0; i < _s.LossTypes.Count; i++)
                loss = loss + (_s.LossWeights?[i] ?? 1.0) * PreferenceLosses.Dpo(_s.LossTypes[i], beta, _s.LabelSmoothing,
                    chosen, rejected, refChosen, refRejected, chosenTokens, rejectedTokens).sum();
            chosenRewards = Values(beta * (chosen - refChosen));
            rejectedRewards = Values(beta * (rejected - refRejected));
            metrics["logps/chosen"] = Values(chosen).Sum();
            metrics["logps/rejected"] = Values(rejected).Sum();
        }
        else
        {
            // SimPO (CPO) and ORPO score length-averaged log-probabilities and add the chosen completions' NLL
            // (mean cross-entropy over the batch's chosen tokens).
            var chosenAverage = chosen / chosenTokens.clamp_min(1);
            var rejectedAverage = rejected / rejectedTokens.clamp_min(1);
            var nll = -chosen.sum() / chosenTokens.sum().clamp_min(1);
            if (_s.Method == RlMethod.Simpo)
            {
                loss = PreferenceLosses.Simpo(beta, _s.SimpoGamma, _s.LabelSmoothing, chosenAverage, rejectedAverage).sum() + pairs * _s.CpoAlpha * nll;
            }
            else
            {
                var (scaled, ratio, logOdds) = PreferenceLosses.OrpoOddsRatio(beta, chosenAverage, rejectedAverage);
                loss = pairs * nll - scaled.sum();
                metrics["log_odds_ratio"] = ratio.mean().item<double>() * pairs;
                metrics["log_odds_chosen"] = logOdds.mean().item<double>() * pairs;
            }
            metrics["nll_loss"] = nll.item<double>() * pairs;
            chosenRewards = Values(beta * chosenAverage);
            rejectedRewards = Values(beta * rejectedAverage);
            metrics["logps/chosen"] = Values(chosenAverage).Sum();
            metrics["logps/rejected"] = Values(rejectedAverage).Sum();
        }
        metrics["rewards/chosen"] = chosenRewards.Sum();
        metrics["rewards/rejected"] = rejectedRewards.Sum();
        metrics["rewards/accuracies"] = chosenRewards.Zip(rejectedRewards).Count(p => p.First > p.Second);
        metrics["rewards/margins"] = chosenRewards.Zip(rejectedRewards).Sum(p => p.First - p.Second);
        metrics["logits/chosen"] = MeanLogit(0) * pairs;
        metrics["logits/rejected"] = MeanLogit(pairs) * pairs;
        return (loss, metrics);
    }

    static double[] Values(Tensor t)
    {
        using var d = t.detach().cpu();
        return d.data<double>().ToArray();
    }

    /// <summary>The reference of a LoRA run: the same model with its adapters disabled, without gradients.</summary>
    public static Func<Batch, double[]> AdapterDisabledReference(CausalLM model) => batch =>
    {
        using var _ = Adapters.Lora.Disable(model);
        return ReferenceSums(model, batch);
    };

    /// <summary>The reference of a full fine-tune: a frozen copy of the starting weights.</summary>
    public static Func<Batch, double[]> FrozenReference(CausalLM copy)
    {
        foreach (var p in copy.parameters()) p.requires_grad = false;
        copy.eval();
        return batch => ReferenceSums(copy, batch);
    }

    /// <summary>
    /// precompute_ref_log_probs: every row's reference log-probability computed before the first step, looked up by the
    /// row's tokens afterwards (TRL stores them as dataset columns).
    /// </summary>
    public static Func<Batch, double[]> PrecomputedReference(Func<Batch, double[]> reference, IEnumerable<Batch> batches, Action<int>? progress = null)
    {
        var table = new Dictionary<string, double>();
        int done = 0;
        foreach (var batch in batches)
        {
            var sums = reference(batch);
            for (int r = 0; r < batch.Rows; r++) table[RowKey(batch, r)] = sums[r];
            progress?.Invoke(++done);
        }
        return batch => Enumerable.Range(0, batch.Rows).Select(r => table.TryGetValue(RowKey(batch, r), out var v) ? v
            : throw new InvalidOperationException("a row without a precomputed reference log-probability")).ToArray();
    }

    static string RowKey(Batch batch, int row)
    {
        // Ids and labels up to the row's last labelled token: padding differs between batches, the row does not.
        var ids = batch.InputIds.AsSpan(row * batch.Length, batch.Length);
        var labels = batch.Labels.AsSpan(row * batch.Length, batch.Length);
        int end = batch.Length;
        while (end > 0 && labels[end - 1] == Example.IgnoreIndex) end--;
        return string.Join(',', ids[..end].ToArray()) + "|" + string.Join(',', labels[..end].ToArray());
    }

    static double[] ReferenceSums(CausalLM model, Batch batch)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(batch.InputIds, [batch.Rows, batch.Length], device: model.Device);
        var labels = tensor(batch.Labels, [batch.Rows, batch.Length], device: model.Device);
        using var logps = SequenceLogProbs.Compute(model, ids, labels, withGradients: false);
        return logps.Sums;
    }
}
