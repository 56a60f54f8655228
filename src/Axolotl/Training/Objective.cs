using Axolotl.Data;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Training;

/// <summary>
/// What a run optimises: turns one micro-batch into a loss contribution (and named metrics) and its gradients. The
/// training loop owns everything else (accumulation, normalisation, clipping, the optimizer, schedule, callbacks) and
/// never names a loss or a metric. SFT's cross-entropy is one objective; preference losses are others.
/// </summary>
internal interface ITrainingObjective
{
    /// <summary>What the loss averages over in this micro-batch: trainable tokens for cross-entropy, pairs for a
    /// preference loss. The loop sums it over the accumulation window (and over ranks) to normalise.</summary>
    long Units(Batch batch);

    /// <summary>
    /// Forward and backward: accumulates into the parameters' gradients the gradient of <paramref name="scale"/> × the
    /// batch's summed loss (the loop passes 1 / the window's units). Returns the summed loss, unscaled, and summed metrics.
    /// </summary>
    ObjectiveOutput ForwardBackward(Batch batch, double scale);

    /// <summary>The same sums without gradients (evaluation).</summary>
    ObjectiveOutput Forward(Batch batch);
}

/// <summary>
/// A micro-batch's summed loss and summed metrics. The loop reports each as sum ÷ units: per step over the window,
/// averaged over the steps since the last log; in evaluation as per-batch means weighted by rows (transformers' rule).
/// </summary>
internal sealed record ObjectiveOutput(double LossSum, IReadOnlyDictionary<string, double>? MetricSums = null);

/// <summary>
/// Supervised fine-tuning: cross-entropy of the next token over the trainable labels. On a Mixture-of-Experts model
/// with router logits on, the loss also holds router_aux_loss_coef × the load-balancing loss (the model adds it), and
/// the load-balancing loss itself is logged as <c>aux_loss</c>, token-weighted over the window.
/// </summary>
internal sealed class CrossEntropyObjective(CausalLM model) : ITrainingObjective
{
    public long Units(Batch batch) => batch.TrainableTokens;

    public ObjectiveOutput ForwardBackward(Batch batch, double scale)
    {
        var (ids, labels, positionIds, sequenceIds) = BatchTensors.Of(batch, model.Device);
        var (sum, tokens) = model.LossSumBackward(ids, labels, scale, positionIds, sequenceIds, PaddingMask(batch));
        return new ObjectiveOutput(sum, RouterMetrics(tokens));
    }

    public ObjectiveOutput Forward(Batch batch)
    {
        var (ids, labels, positionIds, sequenceIds) = BatchTensors.Of(batch, model.Device);
        var (sum, tokens) = model.LossSum(ids, labels, positionIds, sequenceIds, PaddingMask(batch));
        return new ObjectiveOutput(sum.item<float>(), RouterMetrics(tokens));
    }

    /// <summary>Padding must not vote in the router's load balance; packed rows carry their own mask (sequence ids).</summary>
    Tensor? PaddingMask(Batch batch) =>
        model.OutputRouterLogits && batch is { PositionIds: null, RowLengths: { } lengths } && lengths.Any(l => l < batch.Length)
            ? arange(batch.Length, device: model.Device).unsqueeze(0) < tensor(lengths.Select(l => (long)l).ToArray(), device: model.Device).unsqueeze(1)
            : null;

    IReadOnlyDictionary<string, double>? RouterMetrics(long tokens) =>
        model.LastRouterAuxLoss is double aux ? new Dictionary<string, double> { ["aux_loss"] = aux * tokens } : null;
}

internal static class BatchTensors
{
    /// <summary>A batch as tensors on <paramref name="device"/> (position and sequence ids only for packed rows).</summary>
    public static (Tensor Ids, Tensor Labels, Tensor? PositionIds, Tensor? SequenceIds) Of(Batch batch, Device device)
    {
        Tensor Make(long[] values) => tensor(values, [batch.Rows, batch.Length], device: device);
        return (Make(batch.InputIds), Make(batch.Labels),
            batch.PositionIds is null ? null : Make(batch.PositionIds), batch.PositionIds is null ? null : Make(batch.SequenceIds!));
    }
}
