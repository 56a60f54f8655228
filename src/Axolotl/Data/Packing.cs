namespace Axolotl.Data;

/// <summary>Axolotl's multipack settings: how examples are packed into rows (sample_packing_* keys).</summary>
internal sealed record PackingOptions
{
    /// <summary>The packing the config asks for (used for training with sample_packing, for evaluation with eval_sample_packing).</summary>
    public static PackingOptions For(Config.AxolotlConfig config) => new()
    {
        SequenceLen = config.SequenceLen,
        MicroBatchSize = config.MicroBatchSize,
        RealBatches = config.MultipackRealBatches,
        GroupSize = config.SamplePackingGroupSize,
        BinSize = config.SamplePackingBinSize,
        Sequentially = config.SamplePackingSequentially,
        PadToSequenceLen = config.PadToSequenceLen ?? true,
    };

    public required int SequenceLen { get; init; }
    public int MicroBatchSize { get; init; } = 1;
    /// <summary>
    /// multipack_real_batches: a micro-batch is micro_batch_size rows (bins) of sequence_len tokens; false: one row of
    /// micro_batch_size × sequence_len tokens, what Axolotl does for attention kernels with native varlen support.
    /// </summary>
    public bool RealBatches { get; init; } = true;
    /// <summary>sample_packing_group_size: examples are packed in consecutive groups of this many.</summary>
    public int GroupSize { get; init; } = 100_000;
    /// <summary>sample_packing_bin_size: at most this many examples share a bin.</summary>
    public int BinSize { get; init; } = 200;
    /// <summary>sample_packing_sequentially: fill bins in order, opening a new one whenever the next example does not fit.</summary>
    public bool Sequentially { get; init; }
    /// <summary>pad_to_sequence_len: rows are padded up to a multiple of sequence_len rounded up to 64; false: to the longest row.</summary>
    public bool PadToSequenceLen { get; init; } = true;

    public int BinCapacity => RealBatches ? SequenceLen : SequenceLen * MicroBatchSize;

    /// <summary>What pad_to_sequence_len pads rows to a multiple of: Axolotl's pad_to_multiple_of, sequence_len rounded up to 64.</summary>
    public static int PadMultiple(int sequenceLen) => (sequenceLen + 63) / 64 * 64;
    public int BinsPerBatch => RealBatches ? MicroBatchSize : 1;
}

/// <summary>One pass over the data, packed: each batch is a list of bins, each bin the indices of the examples it holds.</summary>
internal sealed record PackedEpoch(IReadOnlyList<int[][]> Batches, long TokensUsed, long TokenSlots)
{
    /// <summary>Tokens in the kept batches over the token slots of their bins.</summary>
    public double Efficiency => TokenSlots == 0 ? 0 : (double)TokensUsed / TokenSlots;
}

/// <summary>
/// Sample packing as Axolotl's MultipackBatchSampler and V2BatchSamplerDataCollatorForSeq2Seq do it: examples, in the
/// sampler's (shuffled) order, go first-fit-decreasing into bins of <see cref="PackingOptions.BinCapacity"/> tokens, group by group;
/// consecutive bins form micro-batches and an incomplete last micro-batch is dropped. Each bin becomes one row with
/// position ids restarting at 0 per example and a per-token example number, from which the model builds a
/// block-diagonal causal mask: packed and unpacked examples give the same loss and gradients.
/// </summary>
internal static class Packing
{
    public static PackedEpoch Pack(IReadOnlyList<Example> examples, IReadOnlyList<int> order, PackingOptions o)
    {
        int capacity = o.BinCapacity;
        var lengths = new int[order.Count];
        for (int k = 0; k < lengths.Length; k++)
        {
            lengths[k] = examples is MappedExamples mapped ? mapped.LengthOf(order[k]) : examples[order[k]].InputIds.Length;
            if (lengths[k] > capacity)
                throw new ArgumentException($"an example of {lengths[k]} tokens cannot be packed into bins of {capacity}");
        }
        var bins = o.Sequentially ? Sequential(lengths, capacity) : FirstFitDecreasing(lengths, capacity, o.GroupSize, o.BinSize);
        int kept = bins.Count / o.BinsPerBatch; // drop_last
        var batches = new List<int[][]>(kept);
        long used = 0;
        for (int b = 0; b < kept; b++)
        {
            var batch = new int[o.BinsPerBatch][];
            for (int r = 0; r < batch.Length; r++)
            {
                var bin = bins[b * o.BinsPerBatch + r];
                batch[r] = new int[bin.Length];
                for (int k = 0; k < bin.Length; k++)
                {
                    batch[r][k] = order[bin[k]];
                    used += lengths[bin[k]];
                }
            }
            batches.Add(batch);
        }
        return new PackedEpoch(batches, used, (long)kept * o.BinsPerBatch * capacity);
    }

    /// <summary>
    /// First-fit-decreasing over consecutive groups of <paramref name="groupSize"/> lengths: longest first (ties in the
    /// given order), each goes into the first bin of its group with room for it and fewer than <paramref name="binSize"/>
    /// members, else into a new bin. Returns positions into <paramref name="lengths"/>; a group's bins are ordered by
    /// where their first (longest) member stands in the given order, so the shuffle, not the length, decides which
    /// bins train first. Axolotl's current pack_group places in the given order, unsorted; on the 999-row alpaca set
    /// at 512 tokens that fills 95.7% of the slots, decreasing order over 98% (its earlier multipack sorted, as here).
    /// </summary>
    public static List<int[]> FirstFitDecreasing(IReadOnlyList<int> lengths, int capacity, int groupSize, int binSize)
    {
        var bins = new List<int[]>();
        for (int start = 0; start < lengths.Count; start += groupSize)
        {
            int n = Math.Min(groupSize, lengths.Count - start);
            // Room left per bin (bins not yet opened have all of it; full ones -1): the leftmost bin with room is a
            // tree descent, so a group of 100k examples packs in O(n log n) instead of scanning every open bin.
            var room = new MaxTree(n, capacity);
            var members = new List<List<int>>();
            foreach (int k in Enumerable.Range(start, n).OrderByDescending(k => lengths[k]))
            {
                int size = lengths[k];
                if (size > capacity) throw new ArgumentException($"length {size} exceeds the bin capacity {capacity}");
                int bin = room.Leftmost(size);
                if (bin == members.Count) members.Add([]);
                members[bin].Add(k);
                room.Set(bin, members[bin].Count >= binSize ? -1 : room[bin] - size);
            }
            bins.AddRange(members.OrderBy(m => m[0]).Select(m => m.ToArray()));
        }
        return bins;
    }

    /// <summary>Axolotl's allocate_sequentially: bins filled in order, a new one opened when the next length does not fit.</summary>
    public static List<int[]> Sequential(IReadOnlyList<int> lengths, int capacity)
    {
        var bins = new List<int[]>();
        var current = new List<int>();
        int remaining = capacity;
        for (int k = 0; k < lengths.Count; k++)
        {
            if (lengths[k] > remaining && current.Count > 0)
            {
                bins.Add([.. current]);
                current.Clear();
                remaining = capacity;
            }
            current.Add(k);
            remaining -= lengths[k];
        }
        if (current.Count > 0) bins.Add([.. current]);
        return bins;
    }

    /// <summary>
    /// One packed micro-batch: each bin becomes a row of its examples back to back, padded on the right. Each example's
    /// first label becomes -100: the position before it (the previous example's last token) must not learn to predict
    /// it, which unpacked it never does either. Padding gets position ids 0, 1, … and example number 0, as Axolotl's
    /// collator pads them, so it attends only to itself.
    /// </summary>
    public static Batch Collate(IReadOnlyList<Example> examples, int[][] bins, PackingOptions o, int padTokenId)
    {
        int longest = bins.Max(bin => bin.Sum(i => examples[i].InputIds.Length));
        int multiple = PackingOptions.PadMultiple(o.SequenceLen);
        int length = o.PadToSequenceLen ? (longest + multiple - 1) / multiple * multiple : longest;
        int rows = bins.Length;
        var ids = new long[rows * length];
        var labels = new long[rows * length];
        var positions = new long[rows * length];
        var sequences = new long[rows * length];
        long trainable = 0, real = 0;
        for (int r = 0; r < rows; r++)
        {
            int t = r * length, end = t + length, sample = 0;
            foreach (var index in bins[r])
            {
                var e = examples[index];
                sample++;
                for (int k = 0; k < e.InputIds.Length; k++, t++)
                {
                    ids[t] = e.InputIds[k];
                    labels[t] = k == 0 ? Example.IgnoreIndex : e.Labels[k];
                    positions[t] = k;
                    sequences[t] = sample;
                    if (labels[t] != Example.IgnoreIndex) trainable++;
                }
                real += e.InputIds.Length;
            }
            for (int p = 0; t < end; t++, p++)
            {
                ids[t] = padTokenId;
                labels[t] = Example.IgnoreIndex;
                positions[t] = p;
            }
        }
        return new Batch(ids, labels, rows, length, trainable, real) { PositionIds = positions, SequenceIds = sequences };
    }

    /// <summary>A max segment tree over bins' remaining room, answering "leftmost bin with at least this much".</summary>
    sealed class MaxTree
    {
        readonly int[] _nodes;
        readonly int _leaves;

        public MaxTree(int count, int value)
        {
            _leaves = 1;
            while (_leaves < count) _leaves <<= 1;
            _nodes = new int[2 * _leaves];
            for (int i = 0; i < _leaves; i++) _nodes[_leaves + i] = i < count ? value : int.MinValue;
            for (int k = _leaves - 1; k >= 1; k--) _nodes[k] = Math.Max(_nodes[2 * k], _nodes[2 * k + 1]);
        }

        public int this[int leaf] => _nodes[_leaves + leaf];

        public void Set(int leaf, int value)
        {
            int k = _leaves + leaf;
            _nodes[k] = value;
            for (k >>= 1; k >= 1; k >>= 1) _nodes[k] = Math.Max(_nodes[2 * k], _nodes[2 * k + 1]);
        }

        public int Leftmost(int atLeast)
        {
            int k = 1;
            while (k < _leaves) k = _nodes[2 * k] >= atLeast ? 2 * k : 2 * k + 1;
            return k - _leaves;
        }
    }
}
