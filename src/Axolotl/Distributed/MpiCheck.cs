using static TorchSharp.torch;

namespace Axolotl.Distributed;

/// <summary>
/// <c>axolotl mpi-check</c> under a launcher: every collective training uses, on values each rank can predict, so a
/// broken launch, library or network shows up in seconds instead of as a hung or silently wrong training run.
/// </summary>
internal static class MpiCheck
{
    /// <summary>Runs the checks on this rank; returns the lines to print (rank 0 only) and throws on a wrong result.</summary>
    public static IReadOnlyList<string> Run(MpiCollectives world)
    {
        int rank = world.Rank, size = world.WorldSize;
        if (Environment.GetEnvironmentVariable("AXOLOTL_TEST_FAIL_RANK") == rank.ToString())
            throw new UserError($"rank {rank} was told to fail (AXOLOTL_TEST_FAIL_RANK), to check that the other ranks stop too.");
        var lines = new List<string> { $"MPI: {world.Describe()}, {size} ranks" };
        using var scope = NewDisposeScope();
        // Odd lengths, so no block size happens to line up with anything.
        const int n = 1001;
        double expectedSum = size * (size + 1) / 2.0;

        var fp32 = full(n, rank + 1.0f);
        world.AllReduceSum(fp32);
        Expect(fp32, full(n, (float)expectedSum), "all-reduce (fp32)");
        var bf16 = full(n, rank + 1.0f, dtype: ScalarType.BFloat16);
        world.AllReduceSum(bf16);
        Expect(bf16.to(ScalarType.Float32), full(n, (float)expectedSum), "all-reduce (bf16 through fp32)");
        var scalar = world.AllReduceSum(rank + 0.5);
        if (scalar != expectedSum - size / 2.0) throw Wrong("all-reduce (double)", $"{scalar}");
        if (world.AllReduceMax((long)rank) != size - 1) throw Wrong("all-reduce (max)", "");

        // Block r of rank k's input holds r·n + i + k; rank r receives Σk (r·n + i + k).
        var input = arange(size * n, dtype: ScalarType.Float32) + rank;
        var block = empty(n, ScalarType.Float32);
        world.ReduceScatterSum(input, block);
        Expect(block, arange(rank * n, (rank + 1) * n, dtype: ScalarType.Float32) * size + (size - 1) * size / 2.0, "reduce-scatter");

        // Each rank fills only its own block; afterwards block k holds k everywhere.
        var gathered = zeros(size * n, dtype: ScalarType.BFloat16);
        gathered.narrow(0, rank * n, n).fill_(rank);
        world.AllGather(gathered);
        Expect(gathered.to(ScalarType.Float32), arange(size, dtype: ScalarType.Float32).repeat_interleave(n), "all-gather");

        var broadcast = full(n, rank == size - 1 ? 7.0f : -1.0f);
        world.Broadcast(broadcast, root: size - 1);
        Expect(broadcast, full(n, 7.0f), "broadcast");
        world.Barrier();
        lines.Add("all-reduce, reduce-scatter, all-gather, broadcast, barrier: ok on every rank");
        return lines;
    }

    static void Expect(Tensor actual, Tensor expected, string what)
    {
        if (!actual.allclose(expected, rtol: 0, atol: 1e-3))
            throw Wrong(what, $"max difference {(actual - expected).abs().max().item<float>()}");
    }

    static UserError Wrong(string what, string detail) =>
        new($"MPI check: {what} gave a wrong result ({detail}); the MPI installation or launch is broken.");
}
