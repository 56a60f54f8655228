using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Training;

public sealed record TrainingOptions
{
    public int MicroBatchSize { get; init; } = 1;
    public int GradientAccumulationSteps { get; init; } = 1;
    public double NumEpochs { get; init; } = 1;
    public int? MaxSteps { get; init; }
    public double LearningRate { get; init; } = 2e-4;
    public string LrScheduler { get; init; } = "cosine";
    /// <summary>adamw_torch (= adamw_torch_fused), sgd, adafactor or lion_32bit: see <see cref="TrainingOptimizer"/>.</summary>
    public string Optimizer { get; init; } = "adamw_torch";
    /// <summary>Axolotl's cosine floor: the schedule decays to this fraction of the peak instead of 0.</summary>
    public double? CosineMinLrRatio { get; init; }
    /// <summary>With CosineMinLrRatio: the floor is reached at this fraction of the steps and held after.</summary>
    public double? CosineConstantLrRatio { get; init; }
    public int? WarmupSteps { get; init; }
    public double? WarmupRatio { get; init; }
    public double WeightDecay { get; init; }
    /// <summary>0 turns clipping off; the norm is still measured and logged.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Epsilon { get; init; } = 1e-8;
    public int? LoggingSteps { get; init; }
    public int Seed { get; init; } = 42;
    public int PadTokenId { get; init; }
    /// <summary>Evaluate every N steps (a fraction of the run below 1); EvalsPerEpoch wins when set.</summary>
    public double? EvalSteps { get; init; }
    public int? EvalsPerEpoch { get; init; }
    /// <summary>Rows per evaluation batch; the micro-batch size when unset.</summary>
    public int? EvalBatchSize { get; init; }
    /// <summary>Peak FLOP/s of this machine in the compute dtype; when set, each log entry carries <c>mfu</c>
    /// (tokens/s × <see cref="Flops.PerToken(DecoderConfig,long,long,double)"/> ÷ this).</summary>
    public double? PeakFlops { get; init; }
    /// <summary>Train on the examples in their prepared order each epoch instead of a seeded shuffle (curriculum_sampling).</summary>
    public bool CurriculumSampling { get; init; }
    /// <summary>Axolotl's LossWatchDogCallback: stop once the last logged loss exceeded this at Patience step ends in a row.</summary>
    public double? LossWatchdogThreshold { get; init; }
    public int LossWatchdogPatience { get; init; } = 3;
    /// <summary>Stop after this many evaluations in a row without a better metric (HF's EarlyStoppingCallback, threshold 0).</summary>
    public int? EarlyStoppingPatience { get; init; }
    /// <summary>The evaluation metric that decides the best checkpoint and early stopping (eval_loss, eval_perplexity);
    /// null tracks no best, as transformers without metric_for_best_model.</summary>
    public string? MetricForBestModel { get; init; }
    public bool GreaterIsBetter { get; init; }
    /// <summary>LoRA+ (loraplus_lr_ratio): lora_B matrices and 1-D parameters learn at this multiple of the rate.</summary>
    public double? LoraPlusLrRatio { get; init; }
    /// <summary>sample_packing: training micro-batches are packed rows (null: one example per row).</summary>
    public PackingOptions? Packing { get; init; }
    /// <summary>eval_sample_packing: evaluation batches are packed, in order (null: eval_batch_size rows per batch).</summary>
    public PackingOptions? EvalPacking { get; init; }
    /// <summary>pad_to_sequence_len without packing: rows padded up to a multiple of this (null: to the longest row).</summary>
    public int? PadToMultipleOf { get; init; }
}

/// <summary>
/// When and where checkpoints go. <see cref="SaveWeights"/> writes the trained weights (adapter or model) into a
/// folder: the trainer does not know which kind it trains.
/// </summary>
public sealed record CheckpointOptions(string OutputDir, Action<string> SaveWeights)
{
    /// <summary>Save every N optimizer steps; a value below 1 is a fraction of the total steps (transformers' rule).</summary>
    public double SaveSteps { get; init; } = 500;
    /// <summary>When set, wins over SaveSteps: that many evenly spaced saves per epoch.</summary>
    public int? SavesPerEpoch { get; init; }
    public int? SaveTotalLimit { get; init; }
    /// <summary>When set, training ends by loading the weights of the best checkpoint (load_best_model_at_end) with this.</summary>
    public Action<string>? LoadWeights { get; init; }
}

/// <summary>A stop asked for from outside (SIGINT, SIGTERM), honoured after a whole optimizer step.</summary>
public sealed class TrainingInterrupted(int step, string? checkpoint)
    : Exception(checkpoint != null
        ? $"interrupted after step {step}; saved {checkpoint}. Run the same command with auto_resume_from_checkpoints: true (or resume_from_checkpoint: {checkpoint}) to continue."
        : $"interrupted after step {step}; nothing was saved (save_strategy is no).")
{
    public int Step { get; } = step;
    public string? Checkpoint { get; } = checkpoint;
}

/// <summary>The numbers fixed before the first step.</summary>
public sealed record TrainingPlan(int TotalSteps, int StepsPerEpoch, int BatchesPerEpoch, int WarmupSteps, int LoggingSteps, int Epochs, long TrainableParameters, long TotalParameters)
{
    /// <summary>With sample_packing: tokens over token slots of the first epoch's packed batches.</summary>
    public double? PackingEfficiency { get; init; }
}

/// <summary>Receives progress; the CLI draws it, tests ignore it.</summary>
public interface ITrainingObserver
{
    void OnStart(TrainingPlan plan) { }
    void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) { }
    void OnLog(JsonObject entry) { }
    /// <summary>A one-line event outside the log history (early stop, best model loaded).</summary>
    void OnNotice(string message) { }
}

/// <summary>
/// The training loop, with transformers Trainer's semantics: per-epoch seeded shuffling, gradient accumulation with the
/// loss normalised by the trainable tokens of the whole accumulation window, grad-norm measured before clipping,
/// the scheduler's value at step k used for update k+1, and HF's log_history. It knows nothing of model families.
/// </summary>
public sealed class Trainer(CausalLM model, TrainingOptions options, ITrainingObserver? observer = null, CheckpointOptions? checkpoints = null)
{
    public const string OptimizerFile = "optimizer.bin";
    public const string RngFile = "rng_state.bin";
    readonly ITrainingObserver _observer = observer ?? new NullObserver();
    sealed class NullObserver : ITrainingObserver;

    public TrainerState State { get; } = new();

    /// <summary>Trains to the planned step count; with <paramref name="resumeFrom"/> it continues a checkpoint exactly.</summary>
    public TrainerState Train(IReadOnlyList<Example> examples, string? resumeFrom = null, IReadOnlyList<Example>? eval = null,
                              CancellationToken stop = default) => Train(examples, null, resumeFrom, eval, stop);

    /// <summary>
    /// Trains on micro-batches read from a stream (pretraining_dataset) for MaxSteps steps, one "epoch" of
    /// MaxSteps × gradient_accumulation_steps batches, as transformers runs an iterable dataset. A resume asks the
    /// stream for the batches from the first untrained one on.
    /// </summary>
    public TrainerState Train(IBatchStream stream, string? resumeFrom = null, CancellationToken stop = default) =>
        Train([], stream, resumeFrom, null, stop);

    TrainerState Train(IReadOnlyList<Example> examples, IBatchStream? stream, string? resumeFrom, IReadOnlyList<Example>? eval, CancellationToken stop)
    {
        var o = options;
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("no trainable parameters");
        _packed.Clear();
        if (stream != null && o.MaxSteps is null) throw new InvalidOperationException("a streamed run needs MaxSteps");
        int batchesPerEpoch = stream != null ? checked(o.MaxSteps!.Value * o.GradientAccumulationSteps)
            : o.Packing is null ? (examples.Count + o.MicroBatchSize - 1) / o.MicroBatchSize : PackedBatchesPerEpoch(examples);
        int stepsPerEpoch = Math.Max(1, (batchesPerEpoch + o.GradientAccumulationSteps - 1) / o.GradientAccumulationSteps);
        // Axolotl's count for packing (calculate_total_num_steps): floor(epochs × max(1, batches // accumulation)).
        int totalSteps = o.MaxSteps ?? (o.Packing is null ? (int)Math.Ceiling(o.NumEpochs * stepsPerEpoch)
            : Math.Max(1, (int)Math.Floor(o.NumEpochs * Math.Max(1, batchesPerEpoch / o.GradientAccumulationSteps))));
        int epochs = (totalSteps + stepsPerEpoch - 1) / stepsPerEpoch;
        int warmup = LrSchedule.ResolveWarmup(o.WarmupSteps, o.WarmupRatio, totalSteps);
        int loggingSteps = o.LoggingSteps ?? Math.Max(Math.Min((int)(0.005 * totalSteps), 10), 1);
        var schedule = new LrSchedule(o.LrScheduler, warmup, totalSteps) { MinLrRatio = o.CosineMinLrRatio, ConstantLrRatio = o.CosineConstantLrRatio };
        var plan = new TrainingPlan(totalSteps, stepsPerEpoch, batchesPerEpoch, warmup, loggingSteps, epochs,
            trainable.Sum(p => p.parameter.numel()), model.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(model))
        { PackingEfficiency = o.Packing is null || stream != null ? null : PackedEpochOf(examples, 0).Efficiency };
        if (o.EvalPacking is { } evalPacking && eval is { Count: > 0 } && !EvalBatches(eval).Any())
            throw new UserError($"the validation split ({eval.Count} examples) is too small to fill one packed batch of {evalPacking.BinsPerBatch} × {evalPacking.BinCapacity} tokens; set eval_sample_packing: false.");
        _observer.OnStart(plan);
        double flopsPerToken = stream != null ? Flops.PerToken(model.Config, plan.TotalParameters, plan.TrainableParameters, stream.TokensPerRow)
            : examples.Count == 0 ? 0
            : Flops.PerToken(model.Config, plan.TotalParameters, plan.TrainableParameters, examples.Average(e => (double)e.InputIds.Length));

        var device = model.Device;
        using var optimizer = TrainingOptimizer.Create(o.Optimizer, trainable, o);
        model.train();
        State.MaxSteps = totalSteps; State.LoggingSteps = loggingSteps; State.NumTrainEpochs = epochs;
        State.TrainBatchSize = o.MicroBatchSize;
        State.EarlyStoppingPatience = o.EarlyStoppingPatience;

        int saveSteps = checkpoints switch
        {
            null => 0,
            { SavesPerEpoch: int perEpoch } => Math.Max(1, stepsPerEpoch / perEpoch),
            { SaveSteps: < 1 } => (int)Math.Ceiling(checkpoints.SaveSteps * totalSteps),
            _ => (int)checkpoints.SaveSteps,
        };
        int evalSteps = eval is not { Count: > 0 } ? 0
            : o.EvalsPerEpoch is int evalsPerEpoch ? Math.Max(1, stepsPerEpoch / evalsPerEpoch)
            : o.EvalSteps is double every ? (every < 1 ? (int)Math.Ceiling(every * totalSteps) : (int)every)
            : stepsPerEpoch;
        int step = 0;
        if (resumeFrom != null)
        {
            // A checkpoint at or past the planned end leaves nothing to train: the run just saves, as transformers does.
            step = Restore(resumeFrom, optimizer);
        }

        using var streamed = stream is null ? null : new StreamedEpoch(stream.From((long)step * o.GradientAccumulationSteps), batchesPerEpoch, step * o.GradientAccumulationSteps);
        var clock = Stopwatch.StartNew();
        var sinceLog = Stopwatch.StartNew();
        int watchdogViolations = 0;
        double lossSinceLog = 0, gradNormSinceLog = 0, lossTotal = 0;
        long tokensSinceLog = 0;
        int stepsSinceLog = 0, stepsThisRun = 0;
        bool stopped = false;
        for (int epoch = step / stepsPerEpoch; epoch < epochs && step < totalSteps && !stopped; epoch++)
        {
            var batches = streamed ?? Batches(examples, epoch);
            // Batch order depends only on (seed, epoch), so skipping the windows already trained resumes the same stream.
            int firstWindow = epoch == step / stepsPerEpoch ? step % stepsPerEpoch : 0;
            for (int first = firstWindow * o.GradientAccumulationSteps; first < batches.Count && step < totalSteps; first += o.GradientAccumulationSteps)
            {
                var window = Enumerable.Range(first, Math.Min(o.GradientAccumulationSteps, batches.Count - first)).Select(i => batches[i]).ToList();
                long windowTokens = window.Sum(b => b.TrainableTokens);
                double windowLoss = 0;
                if (ComputeDevice.IsCuda(device)) ComputeDevice.ReseedCuda(); // GPU dropout follows the CPU generator a checkpoint saves
                foreach (var batch in window)
                {
                    using var scope = NewDisposeScope();
                    var (ids, labels, positionIds, sequenceIds) = ToTensors(batch, device);
                    var (sum, _) = model.LossSumBackward(ids, labels, 1.0 / Math.Max(1, windowTokens), positionIds, sequenceIds);
                    windowLoss += sum / Math.Max(1, windowTokens);
                    if (window.Count > 1) optimizer.CollectGradients();
                    tokensSinceLog += batch.RealTokens;
                }
                if (!double.IsFinite(windowLoss))
                    throw new UserError($"the loss became {windowLoss} at step {step + 1} (learning rate {o.LearningRate * schedule.Multiplier(step):G3}); " +
                                        "training stopped before the update, so the weights and the last checkpoint are intact. Lower learning_rate or check the data.");
                double gradNorm;
                using (var scope = NewDisposeScope())
                {
                    // torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1.
                    gradNorm = optimizer.GradNorm();
                    double clip = o.MaxGradNorm > 0 ? Math.Min(1.0, o.MaxGradNorm / (gradNorm + 1e-6)) : 1.0;
                    optimizer.Step(o.LearningRate * schedule.Multiplier(step), clip);
                    optimizer.ZeroGrad();
                }
                step++; stepsThisRun++;
                lossSinceLog += windowLoss; lossTotal += windowLoss; gradNormSinceLog += gradNorm; stepsSinceLog++;
                double epochProgress = epoch + Math.Min(1.0, (double)(first + window.Count) / batches.Count);
                double tokensPerSecond = tokensSinceLog / Math.Max(1e-9, sinceLog.Elapsed.TotalSeconds);
                // Like HF, the logged learning rate is the scheduler's value after this step.
                double nextLr = o.LearningRate * schedule.Multiplier(step);
                _observer.OnStep(step, windowLoss, nextLr, tokensPerSecond, clock.Elapsed);
                // Checked at step end, before this step's log, against the last logged loss, as the callback sees it.
                if (o.LossWatchdogThreshold is double threshold && State.LogHistory.Count > 0 && State.LogHistory[^1]["loss"] is JsonNode lastLoss)
                    watchdogViolations = (double)lastLoss > threshold ? watchdogViolations + 1 : 0;
                if (step % loggingSteps == 0 || step == totalSteps)
                {
                    var entry = new JsonObject
                    {
                        ["loss"] = lossSinceLog / stepsSinceLog,
                        ["grad_norm"] = gradNormSinceLog / stepsSinceLog,
                        ["learning_rate"] = nextLr,
                        ["epoch"] = Math.Round(epochProgress, 6),
                        ["step"] = step,
                        ["tokens_per_second"] = Math.Round(tokensPerSecond, 2),
                    };
                    if (o.PeakFlops is > 0) entry["mfu"] = Math.Round(tokensPerSecond * flopsPerToken / o.PeakFlops.Value, 5);
                    State.LogHistory.Add(entry);
                    _observer.OnLog(entry);
                    lossSinceLog = gradNormSinceLog = 0; stepsSinceLog = 0; tokensSinceLog = 0;
                    sinceLog.Restart();
                }
                State.GlobalStep = step;
                State.Epoch = epochProgress;
                bool newBest = false, stopEarly = false;
                if (evalSteps > 0 && step % evalSteps == 0)
                {
                    var evaluation = Evaluate(eval!, step, epochProgress);
                    State.LogHistory.Add(evaluation);
                    _observer.OnLog(evaluation);
                    (newBest, stopEarly) = JudgeEvaluation(evaluation);
                }
                if (saveSteps > 0 && step % saveSteps == 0) SaveCheckpoint(step, optimizer, newBest);
                if (watchdogViolations >= o.LossWatchdogPatience)
                {
                    _observer.OnNotice($"Loss watchdog: the logged loss stayed above loss_watchdog_threshold {o.LossWatchdogThreshold} for {o.LossWatchdogPatience} steps; stopped after step {step} of {totalSteps}.");
                    stopped = true;
                    break;
                }
                if (stopEarly)
                {
                    _observer.OnNotice($"Early stopping: no better {o.MetricForBestModel} in {o.EarlyStoppingPatience} evaluation(s) in a row; stopped after step {step} of {totalSteps}.");
                    stopped = true;
                    break;
                }
                if (stop.IsCancellationRequested && step < totalSteps)
                {
                    string? saved = null;
                    if (checkpoints != null)
                    {
                        if (step % saveSteps != 0) SaveCheckpoint(step, optimizer);
                        saved = Path.Combine(checkpoints.OutputDir, $"checkpoint-{step}");
                    }
                    throw new TrainingInterrupted(step, saved);
                }
            }
        }
        if (checkpoints?.LoadWeights is { } load && State.BestModelCheckpoint is { } best && Directory.Exists(best))
        {
            load(best);
            _observer.OnNotice($"Loaded the best model from {best} ({options.MetricForBestModel} {State.BestMetric:G6}).");
        }
        model.eval();
        State.LogHistory.Add(new JsonObject
        {
            ["epoch"] = Math.Round(State.Epoch, 6),
            ["step"] = step,
            ["train_loss"] = lossTotal / Math.Max(1, stepsThisRun),
            ["train_runtime"] = Math.Round(clock.Elapsed.TotalSeconds, 4),
            ["train_steps_per_second"] = Math.Round(stepsThisRun / Math.Max(1e-9, clock.Elapsed.TotalSeconds), 3),
        });
        return State;
    }

    /// <summary>
    /// checkpoint-N/ as transformers lays it out (weights, optimizer and RNG state, trainer_state.json), written into a
    /// temporary folder and renamed into place, so a kill mid-save never leaves a checkpoint that looks complete.
    /// </summary>
    void SaveCheckpoint(int step, TrainingOptimizer optimizer, bool newBest = false)
    {
        var c = checkpoints!;
        var final = Path.Combine(c.OutputDir, $"checkpoint-{step}");
        // Leftovers of a save or a rotation that a kill interrupted: never complete, never read.
        foreach (var stale in Directory.GetDirectories(c.OutputDir, ".checkpoint-*.tmp").Concat(Directory.GetDirectories(c.OutputDir, ".deleting-checkpoint-*.tmp")))
            Directory.Delete(stale, true);
        var temp = Path.Combine(c.OutputDir, $".checkpoint-{step}.{Environment.ProcessId}.tmp");
        string? bestBefore = State.BestModelCheckpoint;
        // As transformers: the checkpoint saved at a new best evaluation records itself as the best.
        if (newBest) State.BestModelCheckpoint = final;
        try
        {
            Directory.CreateDirectory(temp);
            c.SaveWeights(temp);
            if (SaveDelayMs > 0) Thread.Sleep(SaveDelayMs);
            AtomicFile.Write(Path.Combine(temp, OptimizerFile), s => { using var w = new BinaryWriter(s, System.Text.Encoding.UTF8, leaveOpen: true); optimizer.Save(w); });
            using (var rng = random.get_rng_state()) AtomicFile.WriteAllBytes(Path.Combine(temp, RngFile), rng.bytes);
            State.Save(temp);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A full disk or a lost mount: the half-written folder goes, the checkpoints before it stay usable.
            State.BestModelCheckpoint = bestBefore;
            try { Directory.Delete(temp, true); } catch (Exception cleanup) when (cleanup is IOException or UnauthorizedAccessException) { }
            var previous = Checkpoints(c.OutputDir).Select(x => x.Path).LastOrDefault();
            throw new UserError($"saving checkpoint-{step} failed ({e.Message}); " + (previous != null
                ? $"the previous checkpoint {previous} is intact: free space and run again with auto_resume_from_checkpoints: true."
                : "no earlier checkpoint exists."));
        }
        if (Directory.Exists(final)) DeleteCheckpoint(final);
        Directory.Move(temp, final);
        if (c.SaveTotalLimit is int limit and > 0) Rotate(c.OutputDir, limit);
    }

    /// <summary>Test seam (the kill-and-resume test): a pause in the middle of every checkpoint write, so a kill can land there.</summary>
    static readonly int SaveDelayMs = int.TryParse(Environment.GetEnvironmentVariable("AXOLOTL_TEST_SAVE_DELAY_MS"), out var ms) ? ms : 0;

    /// <summary>Renamed away first, so a kill mid-delete leaves a hidden leftover instead of a checkpoint missing files.</summary>
    static void DeleteCheckpoint(string dir)
    {
        var doomed = Path.Combine(Path.GetDirectoryName(dir)!, $".deleting-{Path.GetFileName(dir)}.{Environment.ProcessId}.tmp");
        Directory.Move(dir, doomed);
        Directory.Delete(doomed, true);
    }

    /// <summary>
    /// save_total_limit as transformers applies it: the oldest go first, but the best checkpoint is kept (it takes the
    /// place of the second newest), and a limit of 1 becomes 2 while the best is not the newest.
    /// </summary>
    void Rotate(string outputDir, int limit)
    {
        var kept = Checkpoints(outputDir).Select(x => x.Path).ToList();
        int best = State.BestModelCheckpoint is { } b ? kept.FindIndex(p => Path.GetFullPath(p) == Path.GetFullPath(b)) : -1;
        if (best >= 0)
        {
            // As transformers' _sorted_checkpoints: the best moves up to second newest (the newest stays last), and
            // a limit of 1 keeps 2 when the best is not the newest.
            for (int i = best; i < kept.Count - 2; i++) (kept[i], kept[i + 1]) = (kept[i + 1], kept[i]);
            if (limit == 1 && best != kept.Count - 1) limit = 2;
        }
        foreach (var old in kept.Take(Math.Max(0, kept.Count - limit))) DeleteCheckpoint(old);
    }

    /// <summary>
    /// One evaluation against the best so far: EarlyStoppingCallback compares with the best before this evaluation
    /// (threshold 0), then the best metric is updated. Returns whether this is a new best and whether to stop.
    /// </summary>
    internal (bool NewBest, bool Stop) JudgeEvaluation(JsonObject evaluation)
    {
        var o = options;
        if (o.MetricForBestModel is not { } metric || evaluation[metric]?.GetValue<double>() is not double value) return (false, false);
        bool better = State.BestMetric is not double best || (o.GreaterIsBetter ? value > best : value < best);
        bool stop = false;
        if (o.EarlyStoppingPatience is int patience)
        {
            State.EarlyStoppingPatienceCounter = better ? 0 : State.EarlyStoppingPatienceCounter + 1;
            stop = State.EarlyStoppingPatienceCounter >= patience;
        }
        if (better) State.BestMetric = value;
        return (better, stop);
    }

    /// <summary>Complete checkpoint-N folders in output_dir, oldest first.</summary>
    public static IEnumerable<(int Step, string Path)> Checkpoints(string outputDir) =>
        !Directory.Exists(outputDir) ? [] :
        Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Ok: int.TryParse(System.IO.Path.GetFileName(d)["checkpoint-".Length..], out var n), Step: n, Path: d))
            .Where(x => x.Ok && File.Exists(System.IO.Path.Combine(x.Path, TrainerState.FileName)))
            .OrderBy(x => x.Step)
            .Select(x => (x.Step, x.Path));

    int Restore(string dir, TrainingOptimizer optimizer)
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
        State.LogHistory.AddRange(saved.LogHistory);
        State.GlobalStep = saved.GlobalStep;
        State.Epoch = saved.Epoch;
        State.BestMetric = saved.BestMetric;
        State.BestModelCheckpoint = saved.BestModelCheckpoint;
        State.EarlyStoppingPatienceCounter = saved.EarlyStoppingPatienceCounter;
        return saved.GlobalStep;
    }

    /// <summary>
    /// Loss on the validation split as transformers' evaluation loop reports it: each batch's mean token loss, averaged
    /// over batches weighted by their rows. Batches go in order, unshuffled.
    /// </summary>
    JsonObject Evaluate(IReadOnlyList<Example> eval, int step, double epoch)
    {
        var metrics = Evaluate(eval);
        metrics["epoch"] = Math.Round(epoch, 6);
        metrics["step"] = step;
        return metrics;
    }

    /// <summary>
    /// The loss of <paramref name="eval"/> as transformers' evaluate(dataset, metric_key_prefix) reports it:
    /// {prefix}_loss, _perplexity, _runtime, _samples_per_second, _steps_per_second.
    /// </summary>
    public JsonObject Evaluate(IReadOnlyList<Example> eval, string prefix = "eval")
    {
        var clock = Stopwatch.StartNew();
        bool training = model.training;
        model.eval();
        double weighted = 0;
        int rows = 0, batches = 0;
        using (no_grad())
            foreach (var batch in EvalBatches(eval))
            {
                using var scope = NewDisposeScope();
                var (ids, labels, positionIds, sequenceIds) = ToTensors(batch, model.Device);
                var (sum, tokens) = model.LossSum(ids, labels, positionIds, sequenceIds);
                batches++;
                if (tokens == 0) continue;
                weighted += sum.item<float>() / tokens * batch.Rows;
                rows += batch.Rows;
            }
        if (training) model.train();
        if (batches == 0 && eval.Count > 0 && options.EvalPacking is { } packed)
            throw new UserError($"the {prefix} split ({eval.Count} examples) is too small to fill one packed batch of {packed.BinsPerBatch} × {packed.BinCapacity} tokens; set eval_sample_packing: false.");
        double loss = weighted / Math.Max(1, rows);
        double seconds = Math.Max(1e-9, clock.Elapsed.TotalSeconds);
        return new JsonObject
        {
            [$"{prefix}_loss"] = loss,
            [$"{prefix}_perplexity"] = Math.Exp(loss),
            [$"{prefix}_runtime"] = Math.Round(seconds, 4),
            [$"{prefix}_samples_per_second"] = Math.Round(eval.Count / seconds, 3),
            [$"{prefix}_steps_per_second"] = Math.Round(batches / seconds, 3),
        };
    }

    /// <summary>Micro-batches of one epoch in a seeded order.</summary>
    IReadOnlyList<Batch> Batches(IReadOnlyList<Example> examples, int epoch)
    {
        if (options.Packing is { } packing)
        {
            var bins = PackedEpochOf(examples, epoch).Batches;
            return new CollatedOnDemand(_packedBatchesPerEpoch, i => Packing.Collate(examples, bins[i], packing, options.PadTokenId));
        }
        // Collated as the loop reaches them: an epoch of padded rows need not sit in memory at once.
        var groups = EpochOrder(examples.Count, epoch).Chunk(options.MicroBatchSize).ToArray();
        return new CollatedOnDemand(groups.Length, i => Pad(examples, groups[i]));
    }

    /// <summary>A stream's batches as the loop indexes them: in order, from the first untrained one.</summary>
    sealed class StreamedEpoch(IEnumerator<Batch> batches, int count, int next) : IReadOnlyList<Batch>, IDisposable
    {
        public int Count => count;
        public Batch this[int index]
        {
            get
            {
                if (index != next++) throw new InvalidOperationException($"streamed batch {index} asked for out of order");
                if (!batches.MoveNext()) throw new InvalidOperationException("the batch stream ended");
                return batches.Current;
            }
        }
        public IEnumerator<Batch> GetEnumerator() => throw new NotSupportedException("a stream is read by index, in order");
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
        public void Dispose() => batches.Dispose();
    }

    /// <summary>Micro-batches collated as the loop reaches them: an epoch of full rows need not sit in memory at once.</summary>
    sealed class CollatedOnDemand(int count, Func<int, Batch> collate) : IReadOnlyList<Batch>
    {
        public int Count => count;
        public Batch this[int index] => collate(index);
        public IEnumerator<Batch> GetEnumerator() => Enumerable.Range(0, count).Select(collate).GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    List<int> EpochOrder(int count, int epoch)
    {
        var order = Enumerable.Range(0, count).ToList();
        // curriculum_sampling: Axolotl's SequentialSampler, the data in its prepared order every epoch.
        if (!options.CurriculumSampling) DatasetBuilder.Shuffle(order, unchecked(options.Seed + epoch));
        return order;
    }

    // Packing a large dataset takes a while, and the first epochs are packed once to plan, so keep them.
    readonly Dictionary<int, PackedEpoch> _packed = [];
    int _packedBatchesPerEpoch;

    PackedEpoch PackedEpochOf(IReadOnlyList<Example> examples, int epoch)
    {
        if (_packed.TryGetValue(epoch, out var packed)) return packed;
        packed = Packing.Pack(examples, EpochOrder(examples.Count, epoch), options.Packing!);
        if (epoch < PlanningEpochs) _packed[epoch] = packed;
        return packed;
    }

    /// <summary>As many packings as Axolotl's sampler draws to size an epoch (num_count_samples).</summary>
    const int PlanningEpochs = 4;

    /// <summary>
    /// Packed batch counts vary a little with the shuffle, so every epoch is cut to the smallest count among the first
    /// four epochs' packings, as Axolotl's sampler takes the minimum of four packings and truncates each epoch to it.
    /// </summary>
    int PackedBatchesPerEpoch(IReadOnlyList<Example> examples)
    {
        _packedBatchesPerEpoch = Enumerable.Range(0, PlanningEpochs).Min(e => PackedEpochOf(examples, e).Batches.Count);
        if (_packedBatchesPerEpoch == 0)
            throw new UserError($"the {examples.Count} training examples do not fill one packed micro-batch of {options.Packing!.BinsPerBatch} × {options.Packing.BinCapacity} tokens; lower micro_batch_size or turn sample_packing off.");
        return _packedBatchesPerEpoch;
    }

    /// <summary>Evaluation batches in order: packed (dropping an incomplete last batch, as Axolotl) or eval_batch_size rows.</summary>
    IEnumerable<Batch> EvalBatches(IReadOnlyList<Example> eval)
    {
        var order = Enumerable.Range(0, eval.Count).ToList();
        if (options.EvalPacking is { } packing)
            return Packing.Pack(eval, order, packing).Batches.Select(bins => Packing.Collate(eval, bins, packing, options.PadTokenId));
        return Collate(eval, order.Chunk(options.EvalBatchSize ?? options.MicroBatchSize));
    }

    /// <summary>A batch as tensors on the model's device (position and sequence ids only for packed rows).</summary>
    static (Tensor Ids, Tensor Labels, Tensor? PositionIds, Tensor? SequenceIds) ToTensors(Batch batch, Device device)
    {
        Tensor Make(long[] values) => tensor(values, [batch.Rows, batch.Length], device: device);
        return (Make(batch.InputIds), Make(batch.Labels),
            batch.PositionIds is null ? null : Make(batch.PositionIds), batch.PositionIds is null ? null : Make(batch.SequenceIds!));
    }

    /// <summary>Each group of example indices as one batch, right-padded to its longest row.</summary>
    IEnumerable<Batch> Collate(IReadOnlyList<Example> examples, IEnumerable<int[]> groups) => groups.Select(chunk => Pad(examples, chunk));

    Batch Pad(IReadOnlyList<Example> examples, int[] rows) =>
        Batch.Pad(rows.Select(i => examples[i]).ToList(), options.PadTokenId, options.PadToMultipleOf);
}
