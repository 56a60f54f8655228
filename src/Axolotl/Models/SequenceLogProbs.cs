using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

/// <summary>
/// Per-sequence log-probabilities of a batch's labelled tokens (HF's shift: position t predicts label t + 1), as TRL's
/// DPO, CPO, ORPO and KTO trainers sum them: Σ log softmax(logits)[label] over a row's labels != -100. The head runs
/// over chunks of predicted positions (as <see cref="CausalLM.LossSumBackward"/>), so fp32 logits of the whole batch
/// never exist. With gradients, the body's graph is kept until <see cref="Backward"/> turns the objective's gradient
/// with respect to each row's sum into parameter gradients, recomputing each head chunk once.
/// </summary>
internal sealed class SequenceLogProbs : IDisposable
{
    /// <summary>Each row's summed log-probability of its labelled tokens.</summary>
    public double[] Sums { get; }
    /// <summary>How many labelled tokens each row has.</summary>
    public long[] Tokens { get; }
    /// <summary>Each row's Σ over its labelled positions of the mean logit over the vocabulary (TRL's logits/chosen, logits/rejected).</summary>
    public double[] LogitMeanSums { get; }

    readonly CausalLM _lm;
    readonly Tensor? _hidden;     // the body's output at predicted positions, attached to the graph
    readonly Tensor? _detached;   // the same, a leaf whose gradient the head chunks accumulate
    readonly Tensor _targets, _rows;

    SequenceLogProbs(CausalLM lm, Tensor? hidden, Tensor? detached, Tensor targets, Tensor rows, double[] sums, long[] tokens, double[] logitMeans)
    {
        _lm = lm;
        (_hidden, _detached, _targets, _rows) = (hidden, detached, targets, rows);
        (Sums, Tokens, LogitMeanSums) = (sums, tokens, logitMeans);
    }

    /// <summary>
    /// Runs the model on ids [rows, length] and sums each row's log-probabilities over its labels. With
    /// <paramref name="withGradients"/> the graph is kept for <see cref="Backward"/>; without, nothing of the forward
    /// pass outlives this call (the reference pass).
    /// </summary>
    public static SequenceLogProbs Compute(CausalLM lm, Tensor ids, Tensor labels, bool withGradients)
    {
        long rows = ids.shape[0], seq = ids.shape[1];
        var sums = zeros(rows, dtype: ScalarType.Float64);
        var logitMeans = zeros(rows, dtype: ScalarType.Float64);
        var y = labels.narrow(1, 1, seq - 1).reshape(-1);
        var keep = y.ne(-100).nonzero().squeeze(1);
        var targets = y.index_select(0, keep).DetachFromDisposeScope();
        var rowOf = keep.div(seq - 1, rounding_mode: RoundingMode.floor).DetachFromDisposeScope();
        var tokens = new long[rows];
        foreach (var r in rowOf.cpu().data<long>()) tokens[r]++;

        Tensor? hidden = null, detached = null;
        using (var grad = withGradients ? enable_grad() : no_grad())
        {
            var body = lm.model.forward(ids);
            var h = body.narrow(1, 0, seq - 1).reshape(-1, body.shape[^1]).index_select(0, keep);
            if (withGradients)
            {
                hidden = h.DetachFromDisposeScope();
                detached = h.detach().requires_grad_(true).DetachFromDisposeScope();
            }
            using var _ = no_grad();
            long n = targets.shape[0], chunk = lm.LossChunkRows;
            for (long start = 0; start < n; start += chunk)
            {
                using var scope = NewDisposeScope();
                long m = Math.Min(chunk, n - start);
                var logits = lm.Head(h.narrow(0, start, m)).to(ScalarType.Float32);
                var logProbs = logits.gather(1, targets.narrow(0, start, m).unsqueeze(1)).squeeze(1) - logits.logsumexp(1);
                var where = rowOf.narrow(0, start, m).to(sums.device);
                sums.index_add_(0, where, logProbs.to(ScalarType.Float64).to(sums.device), 1);
                logitMeans.index_add_(0, where, logits.mean([1]).to(ScalarType.Float64).to(sums.device), 1);
            }
        }
        return new SequenceLogProbs(lm, hidden, detached, targets, rowOf, sums.cpu().data<double>().ToArray(), tokens,
            logitMeans.cpu().data<double>().ToArray());
    }

    /// <summary>
    /// Accumulates into the parameters the gradient of an objective whose derivative with respect to row r's summed
    /// log-probability is <paramref name="rowGradients"/>[r]: per token, g_r · (onehot(label) − softmax(logits)) sent
    /// back through the head chunk by chunk, then through the body once.
    /// </summary>
    public void Backward(double[] rowGradients)
    {
        if (_hidden is null || _detached is null) throw new InvalidOperationException("log-probabilities computed without gradients");
        long n = _targets.shape[0];
        if (n == 0) return;
        using (var scope = NewDisposeScope())
        {
            var perRow = tensor(rowGradients, dtype: ScalarType.Float32, device: _detached.device);
            var weights = perRow.index_select(0, _rows);
            long chunk = _lm.LossChunkRows;
            for (long start = 0; start < n; start += chunk)
            {
                using var inner = NewDisposeScope();
                long m = Math.Min(chunk, n - start);
                var logits = _lm.Head(_detached.narrow(0, start, m));
                Tensor gradient;
                using (no_grad())
                {
                    var target = _targets.narrow(0, start, m).unsqueeze(1);
                    var softmax = F.softmax(logits.to(ScalarType.Float32), -1);
                    softmax.scatter_add_(1, target, full([m, 1], -1f, ScalarType.Float32, softmax.device));
                    // d logp / d logits = onehot − softmax, so the gradient is −w · (softmax − onehot).
                    gradient = softmax.mul_(weights.narrow(0, start, m).neg().unsqueeze(1)).to(logits.dtype);
                }
                logits.backward([gradient]);
            }
        }
        _hidden.backward([_detached.grad!]);
    }

    public void Dispose()
    {
        _hidden?.Dispose();
        _detached?.Dispose();
        _targets.Dispose();
        _rows.Dispose();
    }
}
