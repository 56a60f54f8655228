using Axolotl.Config;

namespace Axolotl.Distributed;

/// <summary>
/// What a training process does differently as one rank of several: its share of the cores, the data prepared once
/// (rank 0 first, the others then read its cache), and outputs written by rank 0 alone.
/// </summary>
internal static class DataParallelRun
{
    /// <summary>Axolotl's default dataset_prepared_path, used when several ranks must share one preparation.</summary>
    public const string DefaultPreparedPath = "last_run_prepared";

    /// <summary>The run's ranks and ZeRO stage, or null for a process alone (a launched job of one rank included).</summary>
    public static DataParallel? Start(AxolotlConfig config, Action<string> info)
    {
        var world = MpiLaunch.World;
        if (world is not { WorldSize: > 1 })
        {
            if (config.Deepspeed is { Length: > 0 }) info("deepspeed: one process has nothing to shard; it trains unsharded (start several with mpirun -np N or --nproc N).");
            return null;
        }
        if (config.WarnedKeys.FirstOrDefault(k => k is "fsdp" or "fsdp_config") is { } fsdp)
            throw new UserError($"{config.SourcePath}: '{fsdp}' (parameters sharded across processes and gathered layer by layer) is not built yet; " +
                                "over several processes use 'deepspeed' with ZeRO stage 1 (sharded optimizer state) or 2 (also sharded gradients).");
        if (config.PretrainingDataset.Count > 0)
            throw new UserError($"{config.SourcePath}: pretraining_dataset (a stream) is not split across processes yet; train it in one process, or prepare the data as a dataset.");
        if (config.SamplePacking && !config.MultipackRealBatches)
            throw new UserError($"{config.SourcePath}: multipack_real_batches: false packs a micro-batch into one row, which cannot be split across processes; set it to true (the default) to train on several.");
        int zeroStage = config.Deepspeed is { Length: > 0 } deepspeed ? DeepSpeedConfig.ZeroStage(deepspeed, config.SourcePath) : 0;
        // N ranks on one machine each with all its cores would slow every one; OMP_NUM_THREADS, when set, wins.
        if (Environment.GetEnvironmentVariable("OMP_NUM_THREADS") == null)
            TorchSharp.torch.set_num_threads(Math.Max(1, Environment.ProcessorCount / MpiLaunch.LocalSize));
        if (string.IsNullOrEmpty(config.DatasetPreparedPath) && config.PretrainingDataset.Count == 0)
        {
            // One rank tokenizes, the others map its cache: the same rows everywhere, tokenized once.
            config.DatasetPreparedPath = DefaultPreparedPath;
        }
        info($"Data parallel: {world.WorldSize} processes ({world.Describe()}), {TorchSharp.torch.get_num_threads()} torch threads each; " +
             $"global batch {config.MicroBatchSize} × {config.GradientAccumulationSteps} × {world.WorldSize} = {config.MicroBatchSize * config.GradientAccumulationSteps * world.WorldSize} " +
             (zeroStage > 0 ? $"(micro_batch_size × gradient_accumulation_steps × processes); ZeRO stage {zeroStage}: optimizer state{(zeroStage == 2 ? " and gradients" : "")} sharded across processes."
                                   : "(micro_batch_size × gradient_accumulation_steps × processes)."));
        return new DataParallel(world, zeroStage);
    }

    /// <summary>Rank 0 does <paramref name="work"/> first (preparing and caching the data); the others wait, then do it
    /// too (reading what rank 0 left). A failure on rank 0 aborts the job, so nobody waits forever.</summary>
    public static T RankZeroFirst<T>(DataParallel? parallel, Func<T> work)
    {
        if (parallel is null) return work();
        T result = default!;
        if (parallel.World.Rank == 0) result = work();
        parallel.World.Barrier();
        if (parallel.World.Rank != 0) result = work();
        return result;
    }

    /// <summary>Whether this process writes the run's files (logs, checkpoints' weights, final outputs).</summary>
    public static bool WritesOutputs(DataParallel? parallel) => parallel is null || parallel.World.Rank == 0;
}
