using System.Diagnostics;
using Axolotl.Distributed;

namespace Axolotl.Tests.Distributed;

/// <summary>A fact that needs Open MPI's mpirun; skipped, saying so, where it is not installed.</summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        if (MpiLaunch.FindMpirun() == null)
            Skip = "mpirun is not on PATH: install Open MPI (apt-get install openmpi-bin libopenmpi-dev; .ci/run does) to run the multi-process tests.";
    }
}

/// <summary>The CLI started as N ranks under mpirun, as a user would (`mpirun -np N axolotl ...`).</summary>
static class MpiJob
{
    public static string Cli => Path.Combine(AppContext.BaseDirectory, "axolotl.dll");

    public static Process Start(int ranks, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(MpiLaunch.FindMpirun()!) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in MpiLaunch.MpirunArguments(ranks)) start.ArgumentList.Add(a);
        // Tests share 2 cores with the rest of the suite: one torch thread per rank.
        foreach (var a in new[] { "-x", "OMP_NUM_THREADS=1", "dotnet", Cli }.Concat(args)) start.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) start.Environment[k] = v;
        return Process.Start(start)!;
    }

    /// <summary>Runs to the end (a hung job fails the test after <paramref name="limit"/> instead of hanging the suite).</summary>
    public static (int Code, string Stdout, string Stderr) Run(int ranks, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null, TimeSpan? limit = null)
    {
        using var process = Start(ranks, args, environment);
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(limit ?? TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"the MPI job did not end within {limit ?? TimeSpan.FromMinutes(5)}: {stderr.Result}");
        }
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
