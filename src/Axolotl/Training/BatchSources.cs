using Axolotl.Data;

namespace Axolotl.Training;

/// <summary>
/// Where a run's micro-batches come from. An epoch's order depends only on (seed, epoch), so a resume skips the
/// batches already trained and reads the same stream as the interrupted run.
/// </summary>
internal interface IBatchSource
{
    /// <summary>Micro-batches in one epoch (every epoch has as many).</summary>
    int BatchesPerEpoch { get; }

    /// <summary>The examples one pass covers (for samples per second).</summary>
    int Examples { get; }

    /// <summary>Average tokens of a row, for the FLOP estimate.</summary>
    double MeanRowTokens { get; }

    /// <summary>With sample packing: tokens over token slots of the first epoch's batches.</summary>
    double? PackingEfficiency => null;

    /// <summary>The epoch's micro-batches, read in order from <paramref name="firstBatch"/> on (earlier ones were trained
    /// before a resume). The loop disposes the list when it is <see cref="IDisposable"/>.</summary>
    IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0);
}

/// <summary>
/// Tokenized examples as training batches: shuffled per epoch with a seed (or in order with curriculum_sampling), then
/// either micro_batch_size rows padded to the longest, or packed bins (sample_packing) with Axolotl's multipack rules.
/// </summary>
internal sealed class ExampleBatches : IBatchSource
{
    readonly IReadOnlyList<Example> _examples;
    readonly TrainingOptions _options;
    // Packing a large dataset takes a while, and the first epochs are packed once to plan, so keep them.
    readonly Dictionary<int, PackedEpoch> _packed = [];

    public ExampleBatches(IReadOnlyList<Example> examples, TrainingOptions options)
    {
        _examples = examples;
        _options = options;
        BatchesPerEpoch = options.Packing is null ? (examples.Count + options.MicroBatchSize - 1) / options.MicroBatchSize : PackedBatchesPerEpoch();
        MeanRowTokens = examples.Count == 0 ? 0 : examples.Average(e => (double)e.InputIds.Length);
        PackingEfficiency = options.Packing is null ? null : PackedEpochOf(0).Efficiency;
    }

    public int BatchesPerEpoch { get; }
    public int Examples => _examples.Count;
    public double MeanRowTokens { get; }
    public double? PackingEfficiency { get; }

    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0)
    {
        if (_options.Packing is { } packing)
        {
            var bins = PackedEpochOf(epoch).Batches;
            return new CollatedOnDemand(BatchesPerEpoch, i => Packing.Collate(_examples, bins[i], packing, _options.PadTokenId));
        }
        // Collated as the loop reaches them: an epoch of padded rows need not sit in memory at once.
        var groups = EpochOrder(epoch).Chunk(_options.MicroBatchSize).ToArray();
        return new CollatedOnDemand(groups.Length, i => Batch.Pad(groups[i].Select(r => _examples[r]).ToList(), _options.PadTokenId, _options.PadToMultipleOf));
    }

    List<int> EpochOrder(int epoch)
    {
        var order = Enumerable.Range(0, _examples.Count).ToList();
        // curriculum_sampling: Axolotl's SequentialSampler, the data in its prepared order every epoch.
        if (!_options.CurriculumSampling) DatasetBuilder.Shuffle(order, unchecked(_options.Seed + epoch));
        return order;
    }

    PackedEpoch PackedEpochOf(int epoch)
    {
        if (_packed.TryGetValue(epoch, out var packed)) return packed;
        packed = Packing.Pack(_examples, EpochOrder(epoch), _options.Packing!);
        if (epoch < PlanningEpochs) _packed[epoch] = packed;
        return packed;
    }

    /// <summary>As many packings as Axolotl's sampler draws to size an epoch (num_count_samples).</summary>
    const int PlanningEpochs = 4;

    /// <summary>
    /// Packed batch counts vary a little with the shuffle, so every epoch is cut to the smallest count among the first
    /// four epochs' packings, as Axolotl's sampler takes the minimum of four packings and truncates each epoch to it.
    /// </summary>
    int PackedBatchesPerEpoch()
    {
        int count = Enumerable.Range(0, PlanningEpochs).Min(e => PackedEpochOf(e).Batches.Count);
        if (count == 0)
            throw new UserError($"the {_examples.Count} training examples do not fill one packed micro-batch of {_options.Packing!.BinsPerBatch} × {_options.Packing.BinCapacity} tokens; lower micro_batch_size or turn sample_packing off.");
        return count;
    }
}

/// <summary>
/// Evaluation batches, in order, unshuffled: packed with eval_sample_packing (an incomplete last batch dropped, as
/// Axolotl), else eval_batch_size rows padded to the longest.
/// </summary>
internal sealed class EvaluationBatches : IBatchSource
{
    readonly IReadOnlyList<Example> _examples;
    readonly TrainingOptions _options;
    readonly List<int[][]>? _packedBins;

    /// <param name="split">The split's name for the error when it is too small to pack (validation, eval, train).</param>
    public EvaluationBatches(IReadOnlyList<Example> examples, TrainingOptions options, string split = "validation")
    {
        _examples = examples;
        _options = options;
        var order = Enumerable.Range(0, examples.Count).ToList();
        if (options.EvalPacking is { } packing)
        {
            _packedBins = Packing.Pack(examples, order, packing).Batches.ToList();
            if (_packedBins.Count == 0 && examples.Count > 0)
                throw new UserError($"the {split} split ({examples.Count} examples) is too small to fill one packed batch of {packing.BinsPerBatch} × {packing.BinCapacity} tokens; set eval_sample_packing: false.");
            BatchesPerEpoch = _packedBins.Count;
        }
        else BatchesPerEpoch = (examples.Count + RowsPerBatch - 1) / RowsPerBatch;
        MeanRowTokens = examples.Count == 0 ? 0 : examples.Average(e => (double)e.InputIds.Length);
    }

    int RowsPerBatch => _options.EvalBatchSize ?? _options.MicroBatchSize;
    public int BatchesPerEpoch { get; }
    public int Examples => _examples.Count;
    public double MeanRowTokens { get; }

    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0)
    {
        if (_packedBins is { } bins)
            return new CollatedOnDemand(bins.Count, i => Packing.Collate(_examples, bins[i], _options.EvalPacking!, _options.PadTokenId));
        var groups = Enumerable.Range(0, _examples.Count).Chunk(RowsPerBatch).ToArray();
        return new CollatedOnDemand(groups.Length, i => Batch.Pad(groups[i].Select(r => _examples[r]).ToList(), _options.PadTokenId, _options.PadToMultipleOf));
    }
}

/// <summary>
/// A stream's micro-batches (pretraining_dataset) as one "epoch" of MaxSteps × gradient_accumulation_steps batches,
/// as transformers runs an iterable dataset; a resume asks the stream for the batches from the first untrained one on.
/// </summary>
internal sealed class StreamBatches(IBatchStream stream, int batches) : IBatchSource
{
    public int BatchesPerEpoch => batches;
    public int Examples => batches;
    public double MeanRowTokens => stream.TokensPerRow;
    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0) => new StreamedEpoch(stream.From(firstBatch), batches, firstBatch);

    /// <summary>A stream's batches as the loop indexes them: in order, from the first untrained one.</summary>
    sealed class StreamedEpoch(IEnumerator<Batch> batches, int count, int next) : IReadOnlyList<Batch>, IDisposable
    {
        public int Count => count;
        public Batch this[int index]
        {
            get
            {
                if (index != next++) throw new InvalidOperationException($"streamed batch {index} asked for out of order");
                if (!batches.MoveNext()) throw new InvalidOperationException("the batch stream ended");
                return batches.Current;
            }
        }
        public IEnumerator<Batch> GetEnumerator() => throw new NotSupportedException("a stream is read by index, in order");
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
        public void Dispose() => batches.Dispose();
    }
}

/// <summary>Micro-batches collated as the loop reaches them: an epoch of full rows need not sit in memory at once.</summary>
internal sealed class CollatedOnDemand(int count, Func<int, Batch> collate) : IReadOnlyList<Batch>
{
    public int Count => count;
    public Batch this[int index] => collate(index);
    public IEnumerator<Batch> GetEnumerator() => Enumerable.Range(0, count).Select(collate).GetEnumerator();
    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
}
