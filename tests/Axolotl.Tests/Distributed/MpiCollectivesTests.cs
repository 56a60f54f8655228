namespace Axolotl.Tests.Distributed;

/// <summary>The MPI layer under a real launcher: every collective on values each rank can predict, and a failure on one
/// rank ending all of them.</summary>
public class MpiCollectivesTests
{
    [MpiFact]
    public void Every_collective_gives_the_expected_values_on_two_and_three_ranks()
    {
        foreach (int ranks in new[] { 2, 3 })
        {
            var (code, stdout, stderr) = MpiJob.Run(ranks, ["mpi-check"]);
            Assert.True(code == 0, $"exit {code}: {stderr}{stdout}");
            Assert.Contains($"{ranks} ranks", stdout);
            Assert.Contains("all-reduce, reduce-scatter, all-gather, broadcast, barrier: ok on every rank", stdout);
        }
    }

    [MpiFact]
    public void A_failing_rank_stops_the_whole_job_with_its_message()
    {
        // Rank 1 fails before the first collective; rank 0 would wait in it forever unless the job is aborted.
        var (code, _, stderr) = MpiJob.Run(2, ["mpi-check"], new Dictionary<string, string> { ["AXOLOTL_TEST_FAIL_RANK"] = "1" }, TimeSpan.FromSeconds(90));
        Assert.NotEqual(0, code);
        Assert.Contains("error (rank 1 of 2): rank 1 was told to fail", stderr);
    }
}

[Collection(Reliability.CapturedConsole.Name)]
public class MpiCheckCommandTests
{
    [Fact]
    public void Mpi_check_alone_says_how_to_launch_it()
    {
        var (code, _, stderr) = Reliability.InProcessCli.Run("mpi-check");
        Assert.Equal(2, code);
        Assert.Contains("mpirun -np 2 axolotl mpi-check", stderr);
    }
}
