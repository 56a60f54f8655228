using Axolotl.Data;

namespace Axolotl.Training.Objectives;

/// <summary>
/// The batches of a preference run: the prepared pairs (consecutive chosen/rejected examples, see
/// <see cref="PreferenceDataset"/>) in a seeded order per epoch (the prepared order with curriculum_sampling),
/// micro_batch_size pairs per batch, collated as TRL's DataCollatorForPreference when the loop reaches them.
/// </summary>
internal sealed class PreferenceBatches : IBatchSource
{
    readonly IReadOnlyList<Example> _examples;
    readonly int _microBatchSize, _padTokenId, _seed;
    readonly int? _maxLength;
    readonly bool _sequential;

    public PreferenceBatches(IReadOnlyList<Example> examples, int microBatchSize, int padTokenId, int? maxLength, int seed, bool sequential)
    {
        if (examples.Count % 2 != 0) throw new ArgumentException("preference examples come in chosen/rejected pairs", nameof(examples));
        (_examples, _microBatchSize, _padTokenId, _maxLength, _seed, _sequential) = (examples, microBatchSize, padTokenId, maxLength, seed, sequential);
    }

    public int Pairs => _examples.Count / 2;

    public int BatchesPerEpoch => (Pairs + _microBatchSize - 1) / _microBatchSize;

    /// <summary>Pairs: what one pass covers.</summary>
    public int Examples => Pairs;

    public double MeanRowTokens => _examples.Count == 0 ? 0 : _examples.Average(e => (double)e.InputIds.Length);

    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0)
    {
        var order = Enumerable.Range(0, Pairs).ToList();
        if (!_sequential) DatasetBuilder.Shuffle(order, unchecked(_seed + epoch));
        var groups = order.Chunk(_microBatchSize).ToArray();
        return new OnDemand(groups.Length, i => PreferenceTokenization.Collate(
            groups[i].Select(p => PreferenceDataset.Pair(_examples[2 * p], _examples[2 * p + 1])).ToList(), _padTokenId, _maxLength));
    }

    sealed class OnDemand(int count, Func<int, Batch> collate) : IReadOnlyList<Batch>
    {
        public int Count => count;
        public Batch this[int index] => collate(index);
        public IEnumerator<Batch> GetEnumerator() => Enumerable.Range(0, count).Select(collate).GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }
}
