using Axolotl.IO;
using static TorchSharp.torch;

namespace Axolotl.Training;

/// <summary>
/// checkpoint-N/ folders as transformers lays them out (weights, optimizer and RNG state, trainer_state.json): written
/// into a temporary folder and renamed into place, so a kill mid-save never leaves a checkpoint that looks complete;
/// rotated by save_total_limit keeping the best; read back for an exact resume.
/// </summary>
internal sealed class CheckpointStore(CheckpointOptions options, TrainerState state)
{
    public const string OptimizerFile = "optimizer.bin";
    public const string RngFile = "rng_state.bin";

    public CheckpointOptions Options => options;

    /// <summary>Complete checkpoint-N folders in output_dir, oldest first.</summary>
    public static IEnumerable<(int Step, string Path)> Complete(string outputDir) =>
        !Directory.Exists(outputDir) ? [] :
        Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Ok: int.TryParse(System.IO.Path.GetFileName(d)["checkpoint-".Length..], out var n), Step: n, Path: d))
            .Where(x => x.Ok && File.Exists(System.IO.Path.Combine(x.Path, TrainerState.FileName)))
            .OrderBy(x => x.Step)
            .Select(x => (x.Step, x.Path));

    public string PathOf(int step) => Path.Combine(options.OutputDir, $"checkpoint-{step}");

    /// <summary>Writes checkpoint-<paramref name="step"/>; returns its folder.</summary>
    public string Save(int step, TrainingOptimizer optimizer, bool newBest = false)
    {
        var final = PathOf(step);
        // Leftovers of a save or a rotation that a kill interrupted: never complete, never read.
        foreach (var stale in Directory.GetDirectories(options.OutputDir, ".checkpoint-*.tmp").Concat(Directory.GetDirectories(options.OutputDir, ".deleting-checkpoint-*.tmp")))
            Directory.Delete(stale, true);
        var temp = Path.Combine(options.OutputDir, $".checkpoint-{step}.{Environment.ProcessId}.tmp");
        string? bestBefore = state.BestModelCheckpoint;
        // As transformers: the checkpoint saved at a new best evaluation records itself as the best.
        if (newBest) state.BestModelCheckpoint = final;
        try
        {
            Directory.CreateDirectory(temp);
            options.SaveWeights(temp);
            if (SaveDelayMs > 0) Thread.Sleep(SaveDelayMs);
            AtomicFile.Write(Path.Combine(temp, OptimizerFile), s => { using var w = new BinaryWriter(s, System.Text.Encoding.UTF8, leaveOpen: true); optimizer.Save(w); });
            using (var rng = random.get_rng_state()) AtomicFile.WriteAllBytes(Path.Combine(temp, RngFile), rng.bytes);
            state.Save(temp);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A full disk or a lost mount: the half-written folder goes, the checkpoints before it stay usable.
            state.BestModelCheckpoint = bestBefore;
            try { Directory.Delete(temp, true); } catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException) { }
            var previous = Complete(options.OutputDir).Select(x => x.Path).LastOrDefault();
            throw new UserError($"saving checkpoint-{step} failed ({e.Message}); " + (previous != null
                ? $"the previous checkpoint {previous} is intact: free space and run again with auto_resume_from_checkpoints: true."
                : "no earlier checkpoint exists."));
        }
        if (Directory.Exists(final)) Delete(final);
        Directory.Move(temp, final);
        if (options.SaveTotalLimit is int limit and > 0) Rotate(limit);
        return final;
    }

    /// <summary>Test seam (the kill-and-resume test): a pause in the middle of every checkpoint write, so a kill can land there.</summary>
    static readonly int SaveDelayMs = int.TryParse(Environment.GetEnvironmentVariable("AXOLOTL_TEST_SAVE_DELAY_MS"), out var ms) ? ms : 0;

    /// <summary>Renamed away first, so a kill mid-delete leaves a hidden leftover instead of a checkpoint missing files.</summary>
    static void Delete(string dir)
    {
        var doomed = Path.Combine(Path.GetDirectoryName(dir)!, $".deleting-{Path.GetFileName(dir)}.{Environment.ProcessId}.tmp");
        Directory.Move(dir, doomed);
        Directory.Delete(doomed, true);
    }

    /// <summary>
    /// save_total_limit as transformers applies it: the oldest go first, but the best checkpoint is kept (it takes the
    /// place of the second newest), and a limit of 1 becomes 2 while the best is not the newest.
    /// </summary>
    void Rotate(int limit)
    {
        var kept = Complete(options.OutputDir).Select(x => x.Path).ToList();
        int best = state.BestModelCheckpoint is { } b ? kept.FindIndex(p => Path.GetFullPath(p) == Path.GetFullPath(b)) : -1;
        if (best >= 0)
        {
            // As transformers' _sorted_checkpoints: the best moves up to second newest (the newest stays last), and
            // a limit of 1 keeps 2 when the best is not the newest.
            for (int i = best; i < kept.Count - 2; i++) (kept[i], kept[i + 1]) = (kept[i + 1], kept[i]);
            if (limit == 1 && best != kept.Count - 1) limit = 2;
        }
        foreach (var old in kept.Take(Math.Max(0, kept.Count - limit))) Delete(old);
    }

    /// <summary>Restores optimizer, RNG and trainer state from a checkpoint; returns its step.</summary>
    public static int Restore(string dir, TrainingOptimizer optimizer, TrainerState state)
    {
        foreach (var file in new[] { OptimizerFile, RngFile, TrainerState.FileName })
            if (!File.Exists(Path.Combine(dir, file))) throw new UserError($"resume_from_checkpoint: '{dir}' has no {file}; it is not a complete checkpoint.");
        using (var stream = File.OpenRead(Path.Combine(dir, OptimizerFile)))
        using (var reader = new BinaryReader(stream))
            optimizer.Load(reader);
        using (var rng = random.get_rng_state())
        {
            rng.bytes = File.ReadAllBytes(Path.Combine(dir, RngFile));
            random.set_rng_state(rng);
        }
        var saved = TrainerState.Load(dir);
        state.LogHistory.AddRange(saved.LogHistory);
        state.GlobalStep = saved.GlobalStep;
        state.Epoch = saved.Epoch;
        state.BestMetric = saved.BestMetric;
        state.BestModelCheckpoint = saved.BestModelCheckpoint;
        state.EarlyStoppingPatienceCounter = saved.EarlyStoppingPatienceCounter;
        return saved.GlobalStep;
    }
}
