using Axolotl.Data;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Training.Objectives;

/// <summary>
/// The batches of a KTO run, as TRL's KTOTrainer feeds them: the prepared examples in order (KTO's KL pairing needs
/// sequential sampling), <paramref name="batchSize"/> examples per batch. Each example also gets a mismatched KL
/// completion, fixed at preparation as TRL's _get_kl_dataset does: in chunks of <paramref name="klChunk"/> examples
/// (micro_batch_size, for evaluation too) the completions are rotated by one, so example j of a chunk is paired with the
/// completion of example j − 1 (the first with the chunk's last). A batch's rows are [prompt+completion …; prompt+KL
/// completion …], each cut to <paramref name="maxLength"/>, right-padded, with labels on the completion only.
/// </summary>
internal sealed class KtoBatches : IBatchSource
{
    readonly List<KtoExample> _examples;
    readonly int[][] _klCompletions;
    readonly int _batchSize, _padTokenId;
    readonly int? _maxLength;

    public KtoBatches(IReadOnlyList<Example> rows, int batchSize, int klChunk, int padTokenId, int? maxLength)
    {
        _examples = KtoDataset.Unflatten(rows);
        (_batchSize, _padTokenId, _maxLength) = (batchSize, padTokenId, maxLength);
        _klCompletions = new int[_examples.Count][];
        for (int start = 0; start < _examples.Count; start += klChunk)
        {
            int end = Math.Min(start + klChunk, _examples.Count);
            for (int j = start; j < end; j++) _klCompletions[j] = _examples[j == start ? end - 1 : j - 1].Completion;
        }
    }

    public int BatchesPerEpoch => (_examples.Count + _batchSize - 1) / _batchSize;

    public int Examples => _examples.Count;

    public double MeanRowTokens => _examples.Count == 0 ? 0 : _examples.Average(e => (double)(e.Prompt.Length + e.Completion.Length));

    /// <summary>The same order every epoch; each batch is collated when the loop reaches it.</summary>
    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0) => new OnDemand(BatchesPerEpoch, Collate);

    sealed class OnDemand(int count, Func<int, Batch> collate) : IReadOnlyList<Batch>
    {
        public int Count => count;
        public Batch this[int index] => collate(index);
        public IEnumerator<Batch> GetEnumerator() => Enumerable.Range(0, count).Select(collate).GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    /// <summary>The KL completion paired with each example (TRL's KL_completion_ids).</summary>
    public IReadOnlyList<int[]> KlCompletions => _klCompletions;

    Batch Collate(int index)
    {
        int from = index * _batchSize, count = Math.Min(_batchSize, _examples.Count - from);
        Example Row(int[] prompt, int[] completion)
        {
            int[] ids = [.. prompt, .. completion];
            int[] labels = [.. Enumerable.Repeat(Example.IgnoreIndex, prompt.Length), .. completion];
            if (_maxLength is int max && ids.Length > max) (ids, labels) = (ids[..max], labels[..max]);
            return new Example(ids, labels);
        }
        var range = Enumerable.Range(from, count).ToList();
        var rows = range.Select(i => Row(_examples[i].Prompt, _examples[i].Completion))
            .Concat(range.Select(i => Row(_examples[i].Prompt, _klCompletions[i]))).ToList();
        return Batch.Pad(rows, _padTokenId, null) with { Desirable = [.. range.Select(i => _examples[i].Label)] };
    }
}

/// <summary>
/// KTO's objective (TRL 1.8's KTOTrainer, loss_type kto) over <see cref="KtoBatches"/>: the policy's summed
/// completion log-probabilities with gradients; the KL rows' log-probabilities under the policy and the reference give
/// the batch's KL estimate z = max(0, mean(policy − reference)), without gradient; each desirable example loses
/// w_d·(1 − σ(β(r − z))), each undesirable one w_u·(1 − σ(β(z − r))), r = policy − reference, and the batch's loss is
/// their mean. Units are examples. Metrics are TRL's: kl, rewards/chosen, logps/chosen, rewards/rejected,
/// logps/rejected, rewards/margins, each the batch's mean over its desirable (undesirable) examples, passed as
/// mean × examples so the loop's division gives TRL's mean of per-batch means.
/// </summary>
internal sealed class KtoObjective : ITrainingObjective
{
    readonly CausalLM _policy;
    readonly double _beta, _desirableWeight, _undesirableWeight;
    readonly Func<Batch, double[]> _reference;

    /// <param name="reference">Each row's reference log-probability for a batch (main rows, then KL rows).</param>
    public KtoObjective(CausalLM policy, double beta, double desirableWeight, double undesirableWeight, Func<Batch, double[]> reference) =>
        (_policy, _beta, _desirableWeight, _undesirableWeight, _reference) = (policy, beta, desirableWeight, undesirableWeight, reference);

    public long Units(Batch batch) => batch.Rows / 2;

    public ObjectiveOutput ForwardBackward(Batch batch, double scale)
    {
        using var scope = NewDisposeScope();
        int n = batch.Rows / 2;
        var (ids, labels) = Tensors(batch);
        var reference = _reference(batch);
        double[] klPolicy;
        using (var _ = no_grad())
        using (var kl = SequenceLogProbs.Compute(_policy, ids.narrow(0, n, n), labels.narrow(0, n, n), withGradients: false))
            klPolicy = kl.Sums;
        using var policy = SequenceLogProbs.Compute(_policy, ids.narrow(0, 0, n), labels.narrow(0, 0, n), withGradients: true);
        var leaf = tensor(policy.Sums, dtype: ScalarType.Float64).requires_grad_(true);
        var (loss, metrics) = Loss(leaf, klPolicy, reference, batch.Desirable!);
        (loss * scale).backward();
        policy.Backward(leaf.grad!.data<double>().ToArray());
        return new ObjectiveOutput(loss.item<double>(), metrics);
    }

    public ObjectiveOutput Forward(Batch batch)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (ids, labels) = Tensors(batch);
        var reference = _reference(batch);
        using var all = SequenceLogProbs.Compute(_policy, ids, labels, withGradients: false);
        int n = batch.Rows / 2;
        var (loss, metrics) = Loss(tensor(all.Sums[..n], dtype: ScalarType.Float64), all.Sums[n..], reference, batch.Desirable!);
        return new ObjectiveOutput(loss.item<double>(), metrics);
    }

    (Tensor Ids, Tensor Labels) Tensors(Batch batch)
    {
        if (batch.Desirable is null) throw new ArgumentException("a KTO batch carries each example's label", nameof(batch));
        return (tensor(batch.InputIds, [batch.Rows, batch.Length], device: _policy.Device),
                tensor(batch.Labels, [batch.Rows, batch.Length], device: _policy.Device));
    }

    /// <summary>
    /// The summed weighted loss of the batch's examples (a graph over <paramref name="logps"/>) and the metric sums.
    /// <paramref name="reference"/> holds the main rows' reference log-probabilities, then the KL rows'.
    /// </summary>
    public (Tensor Loss, Dictionary<string, double> Metrics) Loss(Tensor logps, double[] klPolicy, double[] reference, bool[] desirable)
    {
        int n = desirable.Length;
        double kl = Math.Max(0, Enumerable.Range(0, n).Average(i => klPolicy[i] - reference[n + i]));
        var logratios = logps - tensor(reference[..n], dtype: ScalarType.Float64);
        long[] chosen = [.. Enumerable.Range(0, n).Where(i => desirable[i]).Select(i => (long)i)];
        long[] rejected = [.. Enumerable.Range(0, n).Where(i => !desirable[i]).Select(i => (long)i)];
        var chosenRatios = logratios.index_select(0, tensor(chosen));
        var rejectedRatios = logratios.index_select(0, tensor(rejected));
        var (desirableLoss, undesirableLoss) = PreferenceLosses.Kto(_beta, chosenRatios, rejectedRatios,
            tensor(kl, dtype: ScalarType.Float64), _desirableWeight, _undesirableWeight);
        var loss = desirableLoss.sum() + undesirableLoss.sum();

        var logpValues = Values(logps);
        var ratioValues = Values(logratios);
        var metrics = new Dictionary<string, double> { ["kl"] = kl * n };
        double? chosenReward = null, rejectedReward = null;
        if (chosen.Length > 0)
        {
            chosenReward = _beta * chosen.Average(i => ratioValues[i]);
            metrics["rewards/chosen"] = chosenReward.Value * n;
            metrics["logps/chosen"] = chosen.Average(i => logpValues[i]) * n;
        }
        if (rejected.Length > 0)
        {
            rejectedReward = _beta * rejected.Average(i => ratioValues[i]);
            metrics["rewards/rejected"] = rejectedReward.Value * n;
            metrics["logps/rejected"] = rejected.Average(i => logpValues[i]) * n;
        }
        if (chosenReward is double c && rejectedReward is double r) metrics["rewards/margins"] = (c - r) * n;
        return (loss, metrics);
    }

    static double[] Values(Tensor t)
    {
        using var d = t.detach().cpu();
        return d.data<double>().ToArray();
    }
}
