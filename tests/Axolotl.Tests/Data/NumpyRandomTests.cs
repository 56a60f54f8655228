using System.Globalization;
using System.Numerics;
using Axolotl.Data;

namespace Axolotl.Tests.Data;

/// <summary>
/// NumPy's default_rng, which datasets' shuffle (and so Axolotl's shards) uses: SeedSequence and PCG64 against numpy's
/// own published test vectors, permutation against draws worked out by hand from those vectors and against numpy's.
/// </summary>
public class NumpyRandomTests
{
    // numpy/random/tests/test_seed_sequence.py, test_reference_data (NumPy, BSD-3-Clause): SeedSequence(entropy).generate_state.
    static readonly uint[][] Inputs =
    [
        [3735928559, 195939070, 229505742, 305419896], [3668361503, 4165561550, 1661411377, 3634257570],
        [164546577, 4166754639, 1765190214, 1303880213], [446610472, 3941463886, 522937693, 1882353782],
        [1864922766, 1719732118, 3882010307, 1776744564], [4141682960, 3310988675, 553637289, 902896340],
        [1134851934, 2352871630, 3699409824, 2648159817], [1240956131, 3107113773, 1283198141, 1924506131],
        [2669565031, 579818610, 3042504477, 2774880435], [2766103236, 2883057919, 4029656435, 862374500],
    ];
    static readonly uint[][] Outputs =
    [
        [3914649087, 576849849, 3593928901, 2229911004], [2240804226, 3691353228, 1365957195, 2654016646],
        [3562296087, 3191708229, 1147942216, 3726991905], [1403443605, 3591372999, 1291086759, 441919183],
        [1086200464, 2191331643, 560336446, 3658716651], [3249937430, 2346751812, 847844327, 2996632307],
        [2584285912, 4034195531, 3523502488, 169742686], [959045797, 3875435559, 1886309314, 359682705],
        [3978441347, 432478529, 3223635119, 138903045], [296367413, 4262059219, 13109864, 3283683422],
    ];
    static readonly ulong[][] Outputs64 =
    [
        [2477551240072187391, 9577394838764454085], [15854241394484835714, 11398914698975566411],
        [13708282465491374871, 16007308345579681096], [15424829579845884309, 1898028439751125927],
        [9411697742461147792, 15714068361935982142], [10079222287618677782, 12870437757549876199],
        [17326737873898640088, 729039288628699544], [16644868984619524261, 1544825456798124994],
        [1857481142255628931, 596584038813451439], [18305404959516669237, 14103312907920476776],
    ];

    [Fact]
    public void Seed_sequence_matches_numpys_reference_data()
    {
        for (int i = 0; i < Inputs.Length; i++)
        {
            Assert.Equal(Outputs[i], SeedSequence.GenerateState(Inputs[i], 4));
            Assert.Equal(Outputs64[i], SeedSequence.GenerateState64(Inputs[i], 2));
        }
    }

    [Fact]
    public void Integers_become_words_lowest_first()
    {
        Assert.Equal([0u], SeedSequence.Words(0));
        Assert.Equal([0xdeadbeafu], SeedSequence.Words(0xdeadbeaf));
        // numpy's _coerce_to_uint32_array docstring example.
        Assert.Equal([3460238034u, 2898026390u, 3235640248u, 2697535605u, 3u], SeedSequence.Words(BigInteger.Parse("1234567890123456789012345678901234567890")));
    }

    [Theory]
    [InlineData("pcg64-testset-1.csv")]
    [InlineData("pcg64-testset-2.csv")]
    public void Pcg64_seeded_through_the_seed_sequence_gives_numpys_raw_outputs(string file)
    {
        var lines = File.ReadAllLines(TestSetup.Data("numpy-random", file));
        var seed = Hex(lines[0].Split(',')[1]);
        var expected = lines.Skip(1).Select(l => Hex(l.Split(',')[1])).ToArray();
        Assert.Equal(1000, expected.Length);
        var rng = NumpyRandom.DefaultRng(seed);
        Assert.Equal(expected, expected.Select(_ => rng.NextUInt64()).ToArray());
    }

    static ulong Hex(string s) => ulong.Parse(s.Trim()[2..], NumberStyles.HexNumber);

    [Fact]
    public void Permutation_swaps_from_the_end_with_32_bit_halves_low_first()
    {
        // Seed 0xdeadbeaf's first output is 0x60d24054e17a0698 (pcg64-testset-1.csv). permutation(3): i = 2 takes the
        // low half 0xe17a0698 & 3 = 0 (swap 2 and 0: [2, 1, 0]); i = 1 takes the high half 0x60d24054 & 1 = 0 ([1, 2, 0]).
        Assert.Equal([1, 2, 0], NumpyRandom.DefaultRng(0xdeadbeaf).Permutation(3));
        // permutation(2) uses only the low half: 0x98 & 1 = 0, so 1 and 0 swap.
        Assert.Equal([1, 0], NumpyRandom.DefaultRng(0xdeadbeaf).Permutation(2));
    }

    // Recorded from NumPy 1.24.2 (Debian 12's python3-numpy): list(numpy.random.default_rng(seed).permutation(n)).
    static readonly int[] Numpy42Of10 = [5, 6, 0, 7, 3, 2, 4, 9, 1, 8];
    static readonly int[] Numpy7Of20 = [3, 8, 12, 13, 14, 16, 10, 15, 1, 6, 0, 7, 4, 18, 5, 19, 17, 2, 9, 11];

    [Fact]
    public void Permutations_longer_than_a_hand_derivation_are_numpys()
    {
        Assert.Equal([3, 7, 6, 5, 1, 2, 4, 0], NumpyRandom.DefaultRng(0xdeadbeaf).Permutation(8));
        Assert.Equal(Numpy42Of10, NumpyRandom.DefaultRng(42).Permutation(10));
        Assert.Equal(Numpy7Of20, NumpyRandom.DefaultRng(7).Permutation(20));
        // permutation(1000) of seed 42: its first 12 and last 6 entries, and sum(p[i] * i) = 248321539 over all of it.
        var large = NumpyRandom.DefaultRng(42).Permutation(1000);
        Assert.Equal([978, 933, 859, 916, 127, 608, 856, 260, 147, 810, 635, 972], large[..12]);
        Assert.Equal([706, 548, 609, 961, 973, 648], large[^6..]);
        Assert.Equal(248321539L, large.Select((v, i) => (long)v * i).Sum());
    }

    [Fact]
    public void Interval_rejects_draws_above_the_bound()
    {
        // Seed 0's first outputs are 0xa30febcfd9c2825f, 0x4510bdf882d9d721 (pcg64-testset-2.csv): with max 2 (mask 3)
        // the halves give 0x...5f & 3 = 3 (rejected), then 0xa30febcf & 3 = 3 (rejected), then 0x82d9d721 & 3 = 1.
        Assert.Equal(1UL, NumpyRandom.DefaultRng(0).Interval(2));
    }

    [Fact]
    public void Shards_cut_the_numpy_permutation_into_contiguous_parts()
    {
        var rows = Enumerable.Range(0, 10).Select(i => new Row(new System.Text.Json.Nodes.JsonObject { ["i"] = i }, "d.jsonl", i + 1)).ToList();
        var order = Numpy42Of10;
        // 10 rows in 3 shards: 4, 3 and 3 rows.
        var parts = Enumerable.Range(0, 3).Select(k => DatasetBuilder.Shard(rows, 3, k, 42).Select(r => (int)r.Fields["i"]!).ToArray()).ToArray();
        Assert.Equal(order[..4], parts[0]);
        Assert.Equal(order[4..7], parts[1]);
        Assert.Equal(order[7..], parts[2]);
        Assert.Throws<UserError>(() => DatasetBuilder.Shard(rows, 3, 0, -1));
    }

    [Fact]
    public void Shuffle_merged_datasets_orders_examples_as_datasets_shuffle_does()
    {
        // Pre-tokenized rows whose first id is the row number: after the merged shuffle, example k is row p[k].
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["rows.jsonl"], Enumerable.Range(0, 20).Select(i => $$"""{"input_ids": [{{i + 10}}, 5, 6], "labels": [{{i + 10}}, 5, 6]}"""));
        var config = new Axolotl.Config.AxolotlConfig
        {
            BaseModel = TestSetup.Data("tok-tiny512"), LearningRate = 1e-3, SequenceLen = 64, Seed = 7,
            Datasets = [new Axolotl.Config.DatasetConfig { Path = dir["rows.jsonl"] }],
        };
        var built = DatasetBuilder.Build(config, () => Axolotl.Tokenization.Tokenizer.FromFolder(TestSetup.Data("tok-tiny512")));
        Assert.Equal(Numpy7Of20.Select(i => i + 10), built.Examples.Select(e => e.InputIds[0]));
    }
}
