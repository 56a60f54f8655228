using System.Runtime.InteropServices;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Distributed;

/// <summary>
/// The loop's hooks for data parallel training: gradients summed over ranks before clipping and the step, each rank's
/// own state gathered for a checkpoint, its own generator restored on resume, and a stop asked for on any rank turned
/// into a checkpoint on all of them.
/// </summary>
internal sealed class DataParallelCallback(MpiCollectives world, CancellationToken stop, Action<string>? notice = null) : ITrainerCallback
{
    readonly System.Diagnostics.Stopwatch _training = new();

    public void OnTrainBegin(TrainerContext c)
    {
        _training.Start();
        // The checkpoint restored rank 0's generator into every rank; each continues with its own (its dropout masks).
        if (c.Optimizer.RestoredRngState is { } state)
        {
            using var rng = random.get_rng_state();
            rng.bytes = state;
            random.set_rng_state(rng);
        }
    }

    public void OnAfterBackward(TrainerContext c) => c.Optimizer.SynchronizeGradients();

    public void OnStepEnd(TrainerContext c)
    {
        KillSelfForTest(c.Step);
        // A signal reaches the ranks at slightly different steps; all agree to save at the first step any saw it.
        if (world.AllReduceSum(stop.IsCancellationRequested ? 1.0 : 0.0) > 0) c.Control.ShouldSave = true;
        if (c.Control.ShouldSave) c.Optimizer.GatherRankState();
    }

    /// <summary>The communication share of the run (rank 0's view), for the console and the benchmark.</summary>
    public void OnTrainEnd(TrainerContext c)
    {
        double total = _training.Elapsed.TotalSeconds, communication = c.Optimizer.CommunicationSeconds;
        notice?.Invoke($"Data parallel: {communication:F1} s of {total:F1} s training in collectives ({communication / Math.Max(1e-9, total):P0}) on rank {world.Rank}, {world.WorldSize} processes.");
    }

    /// <summary>Test seam (the kill test): AXOLOTL_TEST_KILL_RANK=K and AXOLOTL_TEST_KILL_STEP=N make rank K SIGKILL
    /// itself at the end of step N, as the OOM killer or a lost node would.</summary>
    void KillSelfForTest(int step)
    {
        if (Environment.GetEnvironmentVariable("AXOLOTL_TEST_KILL_RANK") == world.Rank.ToString()
            && Environment.GetEnvironmentVariable("AXOLOTL_TEST_KILL_STEP") == step.ToString())
            kill(Environment.ProcessId, 9);
    }

    [DllImport("libc")]
    static extern int kill(int pid, int signal);
}
