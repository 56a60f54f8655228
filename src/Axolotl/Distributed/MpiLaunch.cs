using System.Diagnostics;

namespace Axolotl.Distributed;

/// <summary>
/// How this process was started: alone, or as one rank of an MPI job (mpirun, mpiexec, Slurm's srun), which the
/// launchers say through the environment. MPI is initialised once per process, only for a launched job, and the same
/// collectives serve the whole run.
/// </summary>
internal static class MpiLaunch
{
    static MpiCollectives? _world;

    /// <summary>Set by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE), PMIx launchers (PMIX_RANK, srun --mpi=pmix) or PMI-2 (PMI_SIZE).</summary>
    public static bool Launched =>
        Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is { } size ? size != "1"
        : Environment.GetEnvironmentVariable("PMIX_RANK") != null || Environment.GetEnvironmentVariable("PMI_SIZE") is { } pmi && pmi != "1";

    /// <summary>The job's collectives, initialising MPI on first use; null when this process runs alone.</summary>
    public static MpiCollectives? World
    {
        get
        {
            if (_world != null || !Launched) return _world;
            _world = new MpiCollectives(Mpi.Initialize());
            AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { _world.Dispose(); } catch (Exception) { } };
            return _world;
        }
    }

    /// <summary>The job's collectives if MPI was initialised already (never initialises it).</summary>
    public static MpiCollectives? Current => _world;

    /// <summary>Ranks on this machine (Open MPI says; other launchers: 1), to divide the cores between them.</summary>
    public static int LocalSize =>
        int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE") ?? Environment.GetEnvironmentVariable("SLURM_NTASKS_PER_NODE"), out var n) && n > 0 ? n : 1;

    /// <summary>
    /// Ends every rank after a failure on this one: the message is printed first (by the caller), then MPI_Abort makes
    /// the launcher stop the others, so no rank waits forever in a collective for one that is gone.
    /// </summary>
    public static void AbortAll(int code)
    {
        if (_world is { WorldSize: > 1 } world)
        {
            Console.Out.Flush();
            Console.Error.Flush();
            world.Abort(code);
        }
    }

    /// <summary>
    /// <c>--nproc N</c>: runs the same command as N ranks on this machine under mpirun, each rank with its share of the
    /// cores, and returns mpirun's exit code.
    /// </summary>
    public static int RunUnderMpirun(int processes, IReadOnlyList<string> args)
    {
        var mpirun = FindMpirun() ?? throw new UserError(
            "--nproc needs mpirun, which is not on PATH: install Open MPI (apt-get install openmpi-bin libopenmpi-dev) or start the ranks with your cluster's launcher.");
        var start = new ProcessStartInfo(mpirun) { UseShellExecute = false };
        foreach (var a in MpirunArguments(processes)) start.ArgumentList.Add(a);
        // The same program again: `dotnet axolotl.dll` when run through the host, else the apphost itself.
        var self = Environment.ProcessPath!;
        start.ArgumentList.Add(self);
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") start.ArgumentList.Add(System.Reflection.Assembly.GetEntryAssembly()!.Location);
        foreach (var a in args) start.ArgumentList.Add(a);
        // Each rank runs torch on its share of the cores; N ranks with all cores each would slow every one of them.
        if (Environment.GetEnvironmentVariable("OMP_NUM_THREADS") == null)
            start.Environment["OMP_NUM_THREADS"] = Math.Max(1, Environment.ProcessorCount / processes).ToString();
        using var process = Process.Start(start)!;
        process.WaitForExit();
        return process.ExitCode;
    }

    internal static IEnumerable<string> MpirunArguments(int processes)
    {
        yield return "-np";
        yield return processes.ToString();
        // Each rank sets its own torch threads; Open MPI's default pins a rank to one core.
        yield return "--bind-to";
        yield return "none";
        if (processes > Environment.ProcessorCount) yield return "--oversubscribe";
        if (IsRoot()) yield return "--allow-run-as-root";
    }

    public static string? FindMpirun() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(dir => Path.Combine(dir, "mpirun")).FirstOrDefault(File.Exists);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "geteuid")]
    static extern uint GetEuid();

    static bool IsRoot() => !OperatingSystem.IsWindows() && GetEuid() == 0;
}
