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

internal sealed record TrainingOptions
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
    /// <summary>lr_quadratic_warmup (cosine only), lr_scheduler_kwargs and jagged restarts: see <see cref="LrSchedule"/>.</summary>
    public bool LrQuadraticWarmup { get; init; }
    public System.Text.Json.Nodes.JsonObject? LrSchedulerKwargs { get; init; }
    public LrSchedule.JaggedRestarts? JaggedRestarts { get; init; }
    public int? WarmupSteps { get; init; }
    public double? WarmupRatio { get; init; }
    public double WeightDecay { get; init; }
    /// <summary>0 turns clipping off; the norm is still measured and logged.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Epsilon { get; init; } = 1e-8;
    /// <summary>A low-precision (bf16) trained parameter gets an fp32 master copy and fp32 optimizer state; false
    /// (Axolotl's <c>bfloat16: true</c>) updates it and keeps its state in its own dtype, as torch does.</summary>
    public bool Fp32Masters { get; init; } = true;
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
    /// <summary>The ranks of a data-parallel run (one process by default): window sizes and metrics are summed over them.</summary>
    public Distributed.ICollectives Collectives { get; init; } = Distributed.SingleProcess.Instance;
}

/// <summary>
/// When and where checkpoints go. <see cref="SaveWeights"/> writes the trained weights (adapter or model) into a
/// folder: the trainer does not know which kind it trains.
/// </summary>
internal sealed record CheckpointOptions(string OutputDir, Action<string> SaveWeights)
{
    /// <summary>Save every N optimizer steps; a value below 1 is a fraction of the total steps (transformers' rule).</summary>
    public double SaveSteps { get; init; } = 500;
    /// <summary>When set, wins over SaveSteps: that many evenly spaced saves per epoch.</summary>
    public int? SavesPerEpoch { get; init; }
    public int? SaveTotalLimit { get; init; }
    /// <summary>When set, training ends by loading the weights of the best checkpoint (load_best_model_at_end) with this.</summary>
    public Action<string>? LoadWeights { get; init; }
    /// <summary>save_only_model: checkpoints hold the weights and trainer state only (no optimizer or RNG state); they
    /// cannot be resumed from.</summary>
    public bool SaveOnlyModel { get; init; }
}

/// <summary>A stop asked for from outside (SIGINT, SIGTERM), honoured after a whole optimizer step.</summary>
internal sealed class TrainingInterrupted(int step, string? checkpoint)
    : Exception(checkpoint != null
        ? $"interrupted after step {step}; saved {checkpoint}. Run the same command with auto_resume_from_checkpoints: true (or resume_from_checkpoint: {checkpoint}) to continue."
        : $"interrupted after step {step}; nothing was saved (save_strategy is no).")
{
    public int Step { get; } = step;
    public string? Checkpoint { get; } = checkpoint;
}

/// <summary>The numbers fixed before the first step.</summary>
internal sealed record TrainingPlan(int TotalSteps, int StepsPerEpoch, int BatchesPerEpoch, int WarmupSteps, int LoggingSteps, int Epochs, long TrainableParameters, long TotalParameters)
{
    /// <summary>With sample_packing: tokens over token slots of the first epoch's packed batches.</summary>
    public double? PackingEfficiency { get; init; }
}

/// <summary>Receives progress; the CLI draws it, tests ignore it.</summary>
internal interface ITrainingObserver
{
    void OnStart(TrainingPlan plan) { }
    void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) { }
    void OnLog(JsonObject entry) { }
    /// <summary>A one-line event outside the log history (early stop, best model loaded).</summary>
    void OnNotice(string message) { }
}

/// <summary>
/// The training loop, with transformers Trainer's semantics: gradient accumulation with the loss normalised by the units
/// of the whole accumulation window (trainable tokens for SFT), grad-norm measured before clipping, the scheduler's
/// value at step k used for update k+1, and HF's log_history. It knows nothing of model families or of what is
/// optimised: the <see cref="Objective"/> turns micro-batches into losses, an <see cref="IBatchSource"/> supplies them,
/// and callbacks decide when to log, evaluate, save and stop.
/// </summary>
internal sealed class Trainer(CausalLM model, TrainingOptions options, ITrainingObserver? observer = null, CheckpointOptions? checkpoints = null)
{
    readonly ITrainingObserver _observer = observer ?? new NullObserver();
    sealed class NullObserver : ITrainingObserver;

    public TrainerState State { get; } = new();

    /// <summary>What is optimised; next-token cross-entropy by default.</summary>
    public ITrainingObjective Objective { get; init; } = new CrossEntropyObjective(model);

    /// <summary>Hooks run after the built-in ones (interval, loss watchdog, early stopping, observer).</summary>
    public List<ITrainerCallback> Callbacks { get; } = [];

    /// <summary>Trains on tokenized examples to the planned step count; with <paramref name="resumeFrom"/> it continues a checkpoint exactly.</summary>
    public TrainerState Train(IReadOnlyList<Example> examples, string? resumeFrom = null, IReadOnlyList<Example>? eval = null,
                              CancellationToken stop = default) =>
        Train(new ExampleBatches(examples, options), eval is { Count: > 0 } ? new EvaluationBatches(eval, options) : null, resumeFrom, stop);

    /// <summary>
    /// Trains on micro-batches read from a stream (pretraining_dataset) for MaxSteps steps, one "epoch" of
    /// MaxSteps × gradient_accumulation_steps batches, as transformers runs an iterable dataset.
    /// </summary>
    public TrainerState Train(IBatchStream stream, string? resumeFrom = null, CancellationToken stop = default)
    {
        if (options.MaxSteps is null) throw new InvalidOperationException("a streamed run needs MaxSteps");
        return Train(new StreamBatches(stream, checked(options.MaxSteps.Value * options.GradientAccumulationSteps)), null, resumeFrom, stop);
    }

    public TrainerState Train(IBatchSource train, IBatchSource? eval, string? resumeFrom, CancellationToken stop = default)
    {
        var o = options;
        var collectives = o.Collectives;
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("no trainable parameters");
        int batchesPerEpoch = train.BatchesPerEpoch;
        int stepsPerEpoch = Math.Max(1, (batchesPerEpoch + o.GradientAccumulationSteps - 1) / o.GradientAccumulationSteps);
        // Axolotl's count for packing (calculate_total_num_steps): floor(epochs × max(1, batches // accumulation)).
        int totalSteps = o.MaxSteps ?? (o.Packing is null ? (int)Math.Ceiling(o.NumEpochs * stepsPerEpoch)
            : Math.Max(1, (int)Math.Floor(o.NumEpochs * Math.Max(1, batchesPerEpoch / o.GradientAccumulationSteps))));
        int epochs = (totalSteps + stepsPerEpoch - 1) / stepsPerEpoch;
        int warmup = LrSchedule.ResolveWarmup(o.WarmupSteps, o.WarmupRatio, totalSteps);
        int loggingSteps = o.LoggingSteps ?? Math.Max(Math.Min((int)(0.005 * totalSteps), 10), 1);
        var schedule = new LrSchedule(o.LrScheduler, warmup, totalSteps)
        {
            MinLrRatio = o.CosineMinLrRatio, ConstantLrRatio = o.CosineConstantLrRatio, QuadraticWarmup = o.LrQuadraticWarmup,
            SchedulerKwargs = o.LrSchedulerKwargs, LearningRate = o.LearningRate, Jagged = o.JaggedRestarts,
        };
        var plan = new TrainingPlan(totalSteps, stepsPerEpoch, batchesPerEpoch, warmup, loggingSteps, epochs,
            trainable.Sum(p => p.parameter.numel()), model.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(model))
        { PackingEfficiency = train.PackingEfficiency };
        double flopsPerToken = train.Examples == 0 ? 0 : Flops.PerToken(model.Config, plan.TotalParameters, plan.TrainableParameters, train.MeanRowTokens);

        var device = model.Device;
        using var optimizer = TrainingOptimizer.Create(o.Optimizer, trainable, o);
        model.train();
        State.MaxSteps = totalSteps; State.LoggingSteps = loggingSteps; State.NumTrainEpochs = epochs;
        State.TrainBatchSize = o.MicroBatchSize;
        State.EarlyStoppingPatience = o.EarlyStoppingPatience;

        var store = checkpoints is null ? null : new CheckpointStore(checkpoints, State);
        int saveSteps = checkpoints switch
        {
            null => 0,
            { SavesPerEpoch: int perEpoch } => Math.Max(1, stepsPerEpoch / perEpoch),
            { SaveSteps: < 1 } => (int)Math.Ceiling(checkpoints.SaveSteps * totalSteps),
            _ => (int)checkpoints.SaveSteps,
        };
        int evalSteps = eval is not { Examples: > 0 } ? 0
            : o.EvalsPerEpoch is int evalsPerEpoch ? Math.Max(1, stepsPerEpoch / evalsPerEpoch)
            : o.EvalSteps is double every ? (every < 1 ? (int)Math.Ceiling(every * totalSteps) : (int)every)
            : stepsPerEpoch;
        var context = new TrainerContext { Model = model, Options = o, Plan = plan, State = State, Optimizer = optimizer, Collectives = collectives };
        var callbacks = BuiltInCallbacks(loggingSteps, evalSteps, saveSteps).Concat(Callbacks).ToList();
        context.Log = Log;

        int step = 0;
        // A checkpoint at or past the planned end leaves nothing to train: the run just saves, as transformers does.
        if (resumeFrom != null) step = CheckpointStore.Restore(resumeFrom, optimizer, State);
        context.Step = step;
        foreach (var c in callbacks) c.OnTrainBegin(context);

        var clock = Stopwatch.StartNew();
        var sinceLog = Stopwatch.StartNew();
        double lossSinceLog = 0, gradNormSinceLog = 0, lossTotal = 0;
        var metricsSinceLog = new Dictionary<string, double>();
        long tokensSinceLog = 0;
        int stepsSinceLog = 0, stepsThisRun = 0;
        bool stopped = false;
        for (int epoch = step / stepsPerEpoch; epoch < epochs && step < totalSteps && !stopped; epoch++)
        {
            // Batch order depends only on (seed, epoch), so skipping the windows already trained resumes the same stream.
            int firstWindow = epoch == step / stepsPerEpoch ? step % stepsPerEpoch : 0;
            var batches = train.Epoch(epoch, firstWindow * o.GradientAccumulationSteps);
            using var disposeBatches = batches as IDisposable;
            for (int first = firstWindow * o.GradientAccumulationSteps; first < batches.Count && step < totalSteps && !stopped; first += o.GradientAccumulationSteps)
            {
                var window = Enumerable.Range(first, Math.Min(o.GradientAccumulationSteps, batches.Count - first)).Select(i => batches[i]).ToList();
                double windowUnits = window.Sum(b => Objective.Units(b));
                if (collectives.WorldSize > 1) windowUnits = collectives.AllReduceSum(windowUnits);
                double normaliser = Math.Max(1, windowUnits);
                double windowLoss = 0;
                var windowMetrics = new Dictionary<string, double>();
                if (ComputeDevice.IsCuda(device)) ComputeDevice.ReseedCuda(); // GPU dropout follows the CPU generator a checkpoint saves
                foreach (var batch in window)
                {
                    using var scope = NewDisposeScope();
                    var output = Objective.ForwardBackward(batch, 1.0 / normaliser);
                    windowLoss += output.LossSum / normaliser;
                    foreach (var (name, sum) in output.MetricSums ?? EmptyMetrics)
                        windowMetrics[name] = windowMetrics.GetValueOrDefault(name) + sum / normaliser;
                    if (window.Count > 1) optimizer.CollectGradients();
                    tokensSinceLog += batch.RealTokens;
                }
                if (collectives.WorldSize > 1)
                {
                    windowLoss = collectives.AllReduceSum(windowLoss);
                    foreach (var name in windowMetrics.Keys.Order(StringComparer.Ordinal).ToList()) windowMetrics[name] = collectives.AllReduceSum(windowMetrics[name]);
                }
                if (!double.IsFinite(windowLoss))
                    throw new UserError($"the loss became {windowLoss} at step {step + 1} (learning rate {o.LearningRate * schedule.Multiplier(step):G3}); " +
                                        "training stopped before the update, so the weights and the last checkpoint are intact. Lower learning_rate or check the data.");
                foreach (var c in callbacks) c.OnAfterBackward(context);
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
                foreach (var (name, value) in windowMetrics) metricsSinceLog[name] = metricsSinceLog.GetValueOrDefault(name) + value;
                double epochProgress = epoch + Math.Min(1.0, (double)(first + window.Count) / batches.Count);
                double tokensPerSecond = tokensSinceLog / Math.Max(1e-9, sinceLog.Elapsed.TotalSeconds);
                // Like HF, the logged learning rate is the scheduler's value after this step.
                double nextLr = o.LearningRate * schedule.Multiplier(step);
                context.Step = step;
                context.LastStep = new StepFigures(step, windowLoss, windowMetrics, gradNorm, nextLr, tokensPerSecond, clock.Elapsed, epochProgress);
                var control = context.Control;
                control.ShouldLog = control.ShouldEvaluate = control.ShouldSave = false;
                control.StopReason = null;
                foreach (var c in callbacks) c.OnStepEnd(context);
                if (control.ShouldLog)
                {
                    var entry = new JsonObject
                    {
                        ["loss"] = lossSinceLog / stepsSinceLog,
                        ["grad_norm"] = gradNormSinceLog / stepsSinceLog,
                        ["learning_rate"] = nextLr,
                    };
                    foreach (var (name, sum) in metricsSinceLog) entry[name] = sum / stepsSinceLog;
                    entry["epoch"] = Math.Round(epochProgress, 6);
                    entry["step"] = step;
                    // Data parallel: the run's throughput is every rank's tokens, and its peak every rank's peak.
                    double runTokensPerSecond = collectives.WorldSize > 1
                        ? collectives.AllReduceSum(tokensSinceLog) / Math.Max(1e-9, sinceLog.Elapsed.TotalSeconds) : tokensPerSecond;
                    entry["tokens_per_second"] = Math.Round(runTokensPerSecond, 2);
                    if (o.PeakFlops is > 0) entry["mfu"] = Math.Round(runTokensPerSecond * flopsPerToken / (o.PeakFlops.Value * collectives.WorldSize), 5);
                    Log(entry);
                    lossSinceLog = gradNormSinceLog = 0; stepsSinceLog = 0; tokensSinceLog = 0;
                    metricsSinceLog.Clear();
                    sinceLog.Restart();
                }
                State.GlobalStep = step;
                State.Epoch = epochProgress;
                bool newBest = false;
                if (control.ShouldEvaluate && eval != null)
                {
                    var evaluation = Evaluation.Run(Objective, model, eval, "eval", collectives);
                    evaluation["epoch"] = Math.Round(epochProgress, 6);
                    evaluation["step"] = step;
                    Log(evaluation);
                    foreach (var c in callbacks) c.OnEvaluate(context, evaluation);
                    newBest = TrackBest(evaluation);
                }
                bool saved = false;
                if (control.ShouldSave && store != null) { Save(step, newBest); saved = true; }
                if (control.StopReason is { } reason)
                {
                    _observer.OnNotice(reason);
                    stopped = true;
                }
                else if (stop.IsCancellationRequested && step < totalSteps)
                {
                    if (store != null && !saved) Save(step, false);
                    throw new TrainingInterrupted(step, store?.PathOf(step));
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
        foreach (var c in callbacks) c.OnTrainEnd(context);
        return State;

        void Log(JsonObject entry)
        {
            State.LogHistory.Add(entry);
            foreach (var c in callbacks) c.OnLog(context, entry);
        }

        void Save(int at, bool newBest)
        {
            // Data-parallel ranks hold the same weights: the main one writes them.
            if (collectives.IsMain)
            {
                var dir = store!.Save(at, optimizer, newBest);
                foreach (var c in callbacks) c.OnSave(context, dir);
            }
            collectives.Barrier();
        }
    }

    static readonly IReadOnlyDictionary<string, double> EmptyMetrics = new Dictionary<string, double>();

    IEnumerable<ITrainerCallback> BuiltInCallbacks(int loggingSteps, int evalSteps, int saveSteps)
    {
        yield return new IntervalCallback(loggingSteps, evalSteps, saveSteps);
        if (options.LossWatchdogThreshold is double threshold) yield return new LossWatchdogCallback(threshold, options.LossWatchdogPatience);
        if (EarlyStopping is { } early) yield return early;
        if (options.Collectives.IsMain) yield return new ObserverCallback(_observer);
    }

    EarlyStoppingCallback? EarlyStopping => options is { MetricForBestModel: { } metric, EarlyStoppingPatience: int patience }
        ? new EarlyStoppingCallback(metric, patience, options.GreaterIsBetter) : null;

    /// <summary>Updates the best metric with an evaluation (metric_for_best_model); returns whether it is a new best.</summary>
    bool TrackBest(JsonObject evaluation)
    {
        if (options.MetricForBestModel is not { } metric || evaluation[metric]?.GetValue<double>() is not double value) return false;
        if (!EarlyStoppingCallback.IsBetter(State.BestMetric, value, options.GreaterIsBetter)) return false;
        State.BestMetric = value;
        return true;
    }

    /// <summary>
    /// One evaluation against the best so far: EarlyStoppingCallback compares with the best before this evaluation
    /// (threshold 0), then the best metric is updated. Returns whether this is a new best and whether to stop.
    /// </summary>
    internal (bool NewBest, bool Stop) JudgeEvaluation(JsonObject evaluation)
    {
        bool stop = EarlyStopping?.Judge(State, evaluation, new TrainerControl(), State.GlobalStep, State.MaxSteps) ?? false;
        return (TrackBest(evaluation), stop);
    }

    /// <summary>The loss of <paramref name="eval"/> as transformers' evaluate(dataset, metric_key_prefix) reports it.</summary>
    public JsonObject Evaluate(IReadOnlyList<Example> eval, string prefix = "eval") =>
        Evaluation.Run(Objective, model, new EvaluationBatches(eval, options, prefix == "eval" ? "validation" : prefix), prefix, options.Collectives);
}

/// <summary>
/// Evaluation as transformers' evaluation loop reports it: each batch's mean loss (loss sum ÷ the objective's units),
/// averaged over batches weighted by their rows, in order, without gradients; the same for every metric of the objective.
/// </summary>
internal static class Evaluation
{
    /// <summary>{prefix}_loss, _perplexity, the objective's metrics, _runtime, _samples_per_second, _steps_per_second.</summary>
    public static JsonObject Run(ITrainingObjective objective, CausalLM model, IBatchSource batches, string prefix = "eval", Distributed.ICollectives? collectives = null)
    {
        collectives ??= Distributed.SingleProcess.Instance;
        var clock = Stopwatch.StartNew();
        bool training = model.training;
        model.eval();
        double weighted = 0, rows = 0;
        var weightedMetrics = new SortedDictionary<string, double>(StringComparer.Ordinal);
        int count = 0;
        var list = batches.Epoch(0);
        using (list as IDisposable)
        using (no_grad())
            foreach (var batch in list)
            {
                using var scope = NewDisposeScope();
                var output = objective.Forward(batch);
                long units = objective.Units(batch);
                count++;
                if (units == 0) continue;
                weighted += output.LossSum / units * batch.Rows;
                foreach (var (name, sum) in output.MetricSums ?? new Dictionary<string, double>())
                    weightedMetrics[name] = weightedMetrics.GetValueOrDefault(name) + sum / units * batch.Rows;
                rows += batch.Rows;
            }
        if (training) model.train();
        if (collectives.WorldSize > 1)
        {
            weighted = collectives.AllReduceSum(weighted);
            rows = collectives.AllReduceSum(rows);
            foreach (var name in weightedMetrics.Keys.ToList()) weightedMetrics[name] = collectives.AllReduceSum(weightedMetrics[name]);
        }
        double loss = weighted / Math.Max(1, rows);
        double seconds = Math.Max(1e-9, clock.Elapsed.TotalSeconds);
        var result = new JsonObject
        {
            [$"{prefix}_loss"] = loss,
            [$"{prefix}_perplexity"] = Math.Exp(loss),
        };
        foreach (var (name, value) in weightedMetrics) result[$"{prefix}_{name}"] = value / Math.Max(1, rows);
        result[$"{prefix}_runtime"] = Math.Round(seconds, 4);
        result[$"{prefix}_samples_per_second"] = Math.Round(batches.Examples / seconds, 3);
        result[$"{prefix}_steps_per_second"] = Math.Round(count / seconds, 3);
        return result;
    }
}
