using Axolotl.Data;
using Axolotl.Training;

namespace Axolotl.Distributed;

/// <summary>
/// One rank's share of a global batch source: the source is built with micro_batch_size × ranks rows per micro-batch
/// (the batches one process would train on with that size), and rank r takes rows [r·n/ranks, (r+1)·n/ranks) of each.
/// So N ranks see exactly the rows, padding and packing one process sees with N times the micro-batch, and their
/// summed gradients are that process's up to summation order. Packed rows travel whole (a bin never splits).
/// </summary>
internal sealed class RankBatches(IBatchSource global, int rank, int ranks) : IBatchSource
{
    /// <summary>This rank's training batches: those of one process with micro_batch_size × ranks, cut by rows.</summary>
    public static IBatchSource Training(IReadOnlyList<Example> examples, TrainingOptions options, DataParallel parallel)
    {
        int ranks = parallel.WorldSize, global = options.MicroBatchSize * ranks;
        var globalOptions = options with { MicroBatchSize = global, Packing = options.Packing is { } p ? p with { MicroBatchSize = global } : null };
        return new RankBatches(new ExampleBatches(examples, globalOptions), parallel.Rank, ranks);
    }

    /// <summary>This rank's evaluation batches (every ranks-th of one process's), or null without a validation split.</summary>
    public static IBatchSource? Evaluation(IReadOnlyList<Example> eval, TrainingOptions options, DataParallel parallel) =>
        eval.Count == 0 ? null : new RankEvaluationBatches(new EvaluationBatches(eval, options), parallel.Rank, parallel.WorldSize);

    public int BatchesPerEpoch => global.BatchesPerEpoch;
    public int Examples => global.Examples;
    public double MeanRowTokens => global.MeanRowTokens;
    public double? PackingEfficiency => global.PackingEfficiency;

    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0) => new Slices(global.Epoch(epoch, firstBatch), rank, ranks);

    sealed class Slices(IReadOnlyList<Batch> batches, int rank, int ranks) : IReadOnlyList<Batch>, IDisposable
    {
        public int Count => batches.Count;
        public Batch this[int index] => RowsOf(batches[index], rank, ranks);
        public IEnumerator<Batch> GetEnumerator() => Enumerable.Range(0, Count).Select(i => this[i]).GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
        public void Dispose() => (batches as IDisposable)?.Dispose();
    }

    /// <summary>
    /// Rank <paramref name="rank"/>'s rows of a global batch. A rank left without rows (a last batch smaller than the
    /// number of ranks) gets one row with every label ignored: it runs forward and backward like the others and adds
    /// nothing to the loss or the gradients.
    /// </summary>
    public static Batch RowsOf(Batch global, int rank, int ranks)
    {
        int start = (int)((long)global.Rows * rank / ranks), end = (int)((long)global.Rows * (rank + 1) / ranks);
        bool empty = end == start;
        if (empty) (start, end) = (0, 1);
        int rows = end - start, length = global.Length;
        long[] Slice(long[] all) => all.AsSpan(start * length, rows * length).ToArray();
        var labels = empty ? Enumerable.Repeat((long)Example.IgnoreIndex, rows * length).ToArray() : Slice(global.Labels);
        var positions = global.PositionIds is null ? null : Slice(global.PositionIds);
        long trainable = 0;
        for (int i = 0; i < labels.Length; i++)
        {
            // As Batch counts them: a row's first token and (packed) each sample's first token are never predicted.
            bool predicted = i % length != 0 && (positions is null || positions[i] != 0);
            if (predicted && labels[i] != Example.IgnoreIndex) trainable++;
        }
        // Real tokens split by rows so the ranks' shares add up to the batch's (they only feed tokens/s).
        long real = empty ? 0 : global.RealTokens * end / global.Rows - global.RealTokens * start / global.Rows;
        return new Batch(Slice(global.InputIds), labels, rows, length, trainable, real)
        {
            PositionIds = positions,
            SequenceIds = global.SequenceIds is null ? null : Slice(global.SequenceIds),
        };
    }
}

/// <summary>
/// One rank's share of the evaluation batches: batch i goes to rank i mod ranks. The batches are those one process
/// evaluates, so the rows-weighted sums all-reduced by the loop give its eval loss exactly (up to summation order).
/// </summary>
internal sealed class RankEvaluationBatches(IBatchSource global, int rank, int ranks) : IBatchSource
{
    public int BatchesPerEpoch => (global.BatchesPerEpoch - rank + ranks - 1) / ranks;
    public int Examples => global.Examples;
    public double MeanRowTokens => global.MeanRowTokens;
    public double? PackingEfficiency => global.PackingEfficiency;

    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0)
    {
        var all = global.Epoch(epoch);
        return Enumerable.Range(0, all.Count).Where(i => i % ranks == rank).Skip(firstBatch).Select(i => all[i]).ToList();
    }
}
