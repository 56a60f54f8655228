using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

public class PackingTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>First-fit-decreasing as the plain definition reads: scan the open bins in order for the first with room.</summary>
    static List<int[]> FirstFitByScan(int[] lengths, int capacity, int groupSize, int binSize)
    {
        var bins = new List<int[]>();
        for (int start = 0; start < lengths.Length; start += groupSize)
        {
            var room = new List<int>();
            var members = new List<List<int>>();
            var group = Enumerable.Range(start, Math.Min(groupSize, lengths.Length - start)).ToList();
            group.Sort((a, b) => lengths[a] != lengths[b] ? lengths[b].CompareTo(lengths[a]) : a.CompareTo(b));
            foreach (int k in group)
            {
                int bin = room.FindIndex(r => r >= lengths[k]);
                while (bin >= 0 && members[bin].Count >= binSize) bin = room.FindIndex(bin + 1, r => r >= lengths[k]);
                if (bin < 0) { room.Add(capacity); members.Add([]); bin = room.Count - 1; }
                room[bin] -= lengths[k];
                members[bin].Add(k);
            }
            bins.AddRange(members.OrderBy(m => m[0]).Select(m => m.ToArray()));
        }
        return bins;
    }

    [Fact]
    public void First_fit_decreasing_places_longest_first_respects_bin_size_and_packs_groups_apart()
    {
        int[] lengths = [5, 4, 3, 2, 6, 1];
        // 6 opens a bin, 5 and 4 each another; 3, 2 and 1 fill the first bin each fits. Bins go in the order of where
        // their longest member stands.
        Assert.Equal([[0, 2], [1, 5], [4, 3]], Packing.FirstFitDecreasing(lengths, 8, 100_000, 200));
        Assert.Equal([[0, 2], [1], [4, 3], [5]], Packing.FirstFitDecreasing(lengths, 8, groupSize: 3, 200));
        Assert.Equal([[0, 1, 2], [3]], Packing.FirstFitDecreasing([2, 2, 2, 2], 8, 100_000, binSize: 3));
        Assert.Equal([[0], [1, 2], [3, 4], [5]], Packing.Sequential(lengths, 8));
    }

    [Theory]
    [InlineData(512, 1000, 200, 1)]
    [InlineData(512, 97, 3, 2)]
    [InlineData(64, 250, 200, 3)]
    public void First_fit_tree_agrees_with_a_scan_of_every_open_bin(int capacity, int groupSize, int binSize, int seed)
    {
        var random = new Random(seed);
        var lengths = Enumerable.Range(0, 3000).Select(_ => random.Next(1, capacity) / (random.Next(4) + 1) + 1).ToArray();
        Assert.Equal(FirstFitByScan(lengths, capacity, groupSize, binSize), Packing.FirstFitDecreasing(lengths, capacity, groupSize, binSize));
    }

    static List<Example> Alpaca999()
    {
        var config = new AxolotlConfig
        {
            BaseModel = "m", LearningRate = 1e-3, SequenceLen = 512, SamplePacking = true,
            Datasets = [new DatasetConfig { Path = TestSetup.Data("data-packing", "llamafactory_alpaca_en_demo.json"), Type = "alpaca" }],
        };
        var llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));
        var prepared = DatasetBuilder.Build(config, () => llama2);
        Assert.Equal(999, prepared.RowsRead);
        return [.. prepared.Examples];
    }

    static List<int> Shuffled(int count, int seed)
    {
        var order = Enumerable.Range(0, count).ToList();
        DatasetBuilder.Shuffle(order, seed);
        return order;
    }

    [Fact]
    public void Packs_the_999_row_alpaca_set_at_least_98_percent_full_at_sequence_len_512()
    {
        var examples = Alpaca999();
        var options = new PackingOptions { SequenceLen = 512 };
        var packed = Packing.Pack(examples, Shuffled(examples.Count, 42), options);
        output.WriteLine($"{examples.Count} examples, {examples.Sum(e => e.InputIds.Length)} tokens → {packed.Batches.Count} rows, efficiency {packed.Efficiency:F4}");
        Assert.True(packed.Efficiency >= 0.98, $"efficiency {packed.Efficiency}");
        // One bin per micro-batch drops nothing: every example is packed exactly once, no bin overflows.
        Assert.Equal(Enumerable.Range(0, examples.Count), packed.Batches.SelectMany(b => b.Single()).Order());
        Assert.All(packed.Batches, b => Assert.True(b.Single().Sum(i => examples[i].InputIds.Length) <= 512));
        Assert.Equal(examples.Sum(e => (long)e.InputIds.Length), packed.TokensUsed);
        Assert.Equal(packed.Batches.Count * 512L, packed.TokenSlots);
    }

    [Fact]
    public void Packing_depends_only_on_seed_and_epoch()
    {
        var random = new Random(5);
        var examples = Enumerable.Range(0, 400).Select(_ => new Example(new int[random.Next(2, 300)], new int[1])).ToList();
        var options = new PackingOptions { SequenceLen = 512, MicroBatchSize = 2 };
        var first = Packing.Pack(examples, Shuffled(examples.Count, 42 + 1), options);
        var again = Packing.Pack(examples, Shuffled(examples.Count, 42 + 1), options);
        var otherEpoch = Packing.Pack(examples, Shuffled(examples.Count, 42 + 2), options);
        Assert.Equal(first.Batches.SelectMany(b => b.SelectMany(x => x)), again.Batches.SelectMany(b => b.SelectMany(x => x)));
        Assert.Equal(first.Batches.Select(b => b.Length), again.Batches.Select(b => b.Length));
        Assert.NotEqual(first.Batches.SelectMany(b => b.SelectMany(x => x)), otherEpoch.Batches.SelectMany(b => b.SelectMany(x => x)));
    }

    [Fact]
    public void An_incomplete_last_micro_batch_is_dropped_and_not_counted_as_slots()
    {
        // Five examples that each fill a bin: with two bins per micro-batch the fifth is dropped, as Axolotl's drop_last.
        var examples = Enumerable.Range(0, 5).Select(i => new Example(new int[60 + i], new int[60 + i])).ToList();
        var packed = Packing.Pack(examples, [0, 1, 2, 3, 4], new PackingOptions { SequenceLen = 64, MicroBatchSize = 2 });
        Assert.Equal(2, packed.Batches.Count);
        Assert.Equal(4 * 64, packed.TokenSlots);
        Assert.Equal(60 + 61 + 62 + 63, packed.TokensUsed);
        // multipack_real_batches false: one row of micro_batch_size × sequence_len per micro-batch.
        var oneRow = Packing.Pack(examples, [0, 1, 2, 3, 4], new PackingOptions { SequenceLen = 64, MicroBatchSize = 2, RealBatches = false });
        Assert.Equal([[[0]], [[2, 1]], [[4, 3]]], oneRow.Batches);
    }

    [Fact]
    public void A_packed_row_restarts_positions_numbers_its_samples_and_masks_each_first_label()
    {
        List<Example> examples =
        [
            new([1, 10, 11, 12], [1, 10, 11, 12]),   // fully trained (train_on_inputs, or completion)
            new([1, 20, 21], [-100, -100, 21]),      // prompt masked
            new([1, 30, 31, 32, 33], [1, -100, 31, 32, 33]),
        ];
        var batch = Packing.Collate(examples, [[0, 1], [2]], new PackingOptions { SequenceLen = 70, MicroBatchSize = 2 }, padTokenId: 0);
        Assert.Equal((2, 128), (batch.Rows, batch.Length)); // 70 rounded up to a multiple of 64
        long[] Row(long[] values, int r, int n) => values.Skip(r * batch.Length).Take(n).ToArray();
        Assert.Equal([1, 10, 11, 12, 1, 20, 21, 0, 0], Row(batch.InputIds, 0, 9));
        Assert.Equal([-100, 10, 11, 12, -100, -100, 21, -100, -100], Row(batch.Labels, 0, 9));
        Assert.Equal([0, 1, 2, 3, 0, 1, 2, 0, 1], Row(batch.PositionIds!, 0, 9));
        Assert.Equal([1, 1, 1, 1, 2, 2, 2, 0, 0], Row(batch.SequenceIds!, 0, 9));
        Assert.Equal([-100, -100, 31, 32, 33, -100], Row(batch.Labels, 1, 6));
        Assert.Equal(128 - 5 - 1, batch.PositionIds![^1]);
        Assert.Equal(3 + 1 + 3, batch.TrainableTokens);
        Assert.Equal(12, batch.RealTokens);
        Assert.Equal(7, Packing.Collate(examples, [[0, 1]], new PackingOptions { SequenceLen = 70, PadToSequenceLen = false }, 0).Length);
    }

    [Fact]
    public void With_sample_packing_examples_without_a_trainable_token_are_dropped_and_counted()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["d.jsonl"], [
            """{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, -100, -100]}""",
            """{"input_ids": [1, 5, 6, 7], "labels": [-100, -100, 6, 7]}""",
        ]);
        AxolotlConfig Config(bool packing) => new()
        {
            BaseModel = "m", LearningRate = 1e-3, SamplePacking = packing,
            Datasets = [new DatasetConfig { Path = dir["d.jsonl"] }],
        };
        var packed = DatasetBuilder.Build(Config(true), () => throw new InvalidOperationException());
        Assert.Equal((1, 1), (packed.Examples.Count, packed.DroppedUntrainable));
        Assert.Equal(2, DatasetBuilder.Build(Config(false), () => throw new InvalidOperationException()).Examples.Count);
    }
}
