using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
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
    /// <summary>LoRA+ (loraplus_lr_ratio): lora_B matrices and 1-D parameters learn at this multiple of the rate.</summary>
    public double? LoraPlusLrRatio { get; init; }
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
public sealed record TrainingPlan(int TotalSteps, int StepsPerEpoch, int BatchesPerEpoch, int WarmupSteps, int LoggingSteps, int Epochs, long TrainableParameters, long TotalParameters);

/// <summary>Receives progress; the CLI draws it, tests ignore it.</summary>
public interface ITrainingObserver
{
    void OnStart(TrainingPlan plan) { }
    void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) { }
    void OnLog(JsonObject entry) { }
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
                              CancellationToken stop = default)
    {
        var o = options;
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("no trainable parameters");
        int batchesPerEpoch = (examples.Count + o.MicroBatchSize - 1) / o.MicroBatchSize;
        int stepsPerEpoch = Math.Max(1, (batchesPerEpoch + o.GradientAccumulationSteps - 1) / o.GradientAccumulationSteps);
        int totalSteps = o.MaxSteps ?? (int)Math.Ceiling(o.NumEpochs * stepsPerEpoch);
        int epochs = (totalSteps + stepsPerEpoch - 1) / stepsPerEpoch;
        int warmup = LrSchedule.ResolveWarmup(o.WarmupSteps, o.WarmupRatio, totalSteps);
        int loggingSteps = o.LoggingSteps ?? Math.Max(Math.Min((int)(0.005 * totalSteps), 10), 1);
        var schedule = new LrSchedule(o.LrScheduler, warmup, totalSteps);
        var plan = new TrainingPlan(totalSteps, stepsPerEpoch, batchesPerEpoch, warmup, loggingSteps, epochs,
            trainable.Sum(p => p.parameter.numel()), model.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(model));
        _observer.OnStart(plan);
        double flopsPerToken = examples.Count == 0 ? 0
            : Flops.PerToken(model.Config, plan.TotalParameters, plan.TrainableParameters, examples.Average(e => (double)e.InputIds.Length));

        var optimizer = BuildOptimizer(trainable);
        var parameters = trainable.Select(p => p.parameter).ToList();
        model.train();
        State.MaxSteps = totalSteps; State.LoggingSteps = loggingSteps; State.NumTrainEpochs = epochs;
        State.TrainBatchSize = o.MicroBatchSize;

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

        var clock = Stopwatch.StartNew();
        var sinceLog = Stopwatch.StartNew();
        double lossSinceLog = 0, gradNormSinceLog = 0, lossTotal = 0;
        long tokensSinceLog = 0;
        int stepsSinceLog = 0, stepsThisRun = 0;
        for (int epoch = step / stepsPerEpoch; epoch < epochs && step < totalSteps; epoch++)
        {
            var batches = Batches(examples, epoch).ToList();
            // Batch order depends only on (seed, epoch), so skipping the windows already trained resumes the same stream.
            int firstWindow = epoch == step / stepsPerEpoch ? step % stepsPerEpoch : 0;
            for (int first = firstWindow * o.GradientAccumulationSteps; first < batches.Count && step < totalSteps; first += o.GradientAccumulationSteps)
            {
                var window = batches.Skip(first).Take(o.GradientAccumulationSteps).ToList();
                long windowTokens = window.Sum(b => b.TrainableTokens);
                double windowLoss = 0;
                foreach (var batch in window)
                {
                    using var scope = NewDisposeScope();
                    using var ids = tensor(batch.InputIds, [batch.Rows, batch.Length]);
                    using var labels = tensor(batch.Labels, [batch.Rows, batch.Length]);
                    var (sum, _) = model.LossSumBackward(ids, labels, 1.0 / Math.Max(1, windowTokens));
                    windowLoss += sum / Math.Max(1, windowTokens);
                    tokensSinceLog += batch.RealTokens;
                }
                if (!double.IsFinite(windowLoss))
                    throw new UserError($"the loss became {windowLoss} at step {step + 1} (learning rate {o.LearningRate * schedule.Multiplier(step):G3}); " +
                                        "training stopped before the update, so the weights and the last checkpoint are intact. Lower learning_rate or check the data.");
                double gradNorm;
                using (var scope = NewDisposeScope())
                {
                    gradNorm = nn.utils.clip_grad_norm_(parameters, o.MaxGradNorm > 0 ? o.MaxGradNorm : double.PositiveInfinity);
                    double lr = o.LearningRate * schedule.Multiplier(step);
                    foreach (var (group, scale) in optimizer.ParamGroups.Zip(_groupLrScale)) ((ParamGroup)group).LearningRate = lr * scale;
                    optimizer.step();
                    optimizer.zero_grad();
                }
                step++; stepsThisRun++;
                lossSinceLog += windowLoss; lossTotal += windowLoss; gradNormSinceLog += gradNorm; stepsSinceLog++;
                double epochProgress = epoch + Math.Min(1.0, (double)(first + window.Count) / batches.Count);
                double tokensPerSecond = tokensSinceLog / Math.Max(1e-9, sinceLog.Elapsed.TotalSeconds);
                // Like HF, the logged learning rate is the scheduler's value after this step.
                double nextLr = o.LearningRate * schedule.Multiplier(step);
                _observer.OnStep(step, windowLoss, nextLr, tokensPerSecond, clock.Elapsed);
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
                if (evalSteps > 0 && step % evalSteps == 0)
                {
                    var evaluation = Evaluate(eval!, step, epochProgress);
                    State.LogHistory.Add(evaluation);
                    _observer.OnLog(evaluation);
                }
                if (saveSteps > 0 && step % saveSteps == 0) SaveCheckpoint(step, optimizer);
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
    void SaveCheckpoint(int step, OptimizerHelper optimizer)
    {
        var c = checkpoints!;
        var final = Path.Combine(c.OutputDir, $"checkpoint-{step}");
        var temp = Path.Combine(c.OutputDir, $".checkpoint-{step}.{Environment.ProcessId}.tmp");
        if (Directory.Exists(temp)) Directory.Delete(temp, true);
        Directory.CreateDirectory(temp);
        c.SaveWeights(temp);
        AtomicFile.Write(Path.Combine(temp, OptimizerFile), s => { using var w = new BinaryWriter(s, System.Text.Encoding.UTF8, leaveOpen: true); optimizer.save_state_dict(w); });
        using (var rng = random.get_rng_state()) AtomicFile.WriteAllBytes(Path.Combine(temp, RngFile), rng.bytes);
        State.Save(temp);
        if (Directory.Exists(final)) Directory.Delete(final, true);
        Directory.Move(temp, final);
        if (c.SaveTotalLimit is int limit and > 0)
            foreach (var old in Checkpoints(c.OutputDir).SkipLast(limit)) Directory.Delete(old.Path, true);
    }

    /// <summary>Complete checkpoint-N folders in output_dir, oldest first.</summary>
    public static IEnumerable<(int Step, string Path)> Checkpoints(string outputDir) =>
        !Directory.Exists(outputDir) ? [] :
        Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Ok: int.TryParse(System.IO.Path.GetFileName(d)["checkpoint-".Length..], out var n), Step: n, Path: d))
            .Where(x => x.Ok && File.Exists(System.IO.Path.Combine(x.Path, TrainerState.FileName)))
            .OrderBy(x => x.Step)
            .Select(x => (x.Step, x.Path));

    int Restore(string dir, OptimizerHelper optimizer)
    {
        foreach (var file in new[] { OptimizerFile, RngFile, TrainerState.FileName })
            if (!File.Exists(Path.Combine(dir, file))) throw new UserError($"resume_from_checkpoint: '{dir}' has no {file}; it is not a complete checkpoint.");
        using (var stream = File.OpenRead(Path.Combine(dir, OptimizerFile)))
        using (var reader = new BinaryReader(stream))
            optimizer.load_state_dict(reader);
        using (var rng = random.get_rng_state())
        {
            rng.bytes = File.ReadAllBytes(Path.Combine(dir, RngFile));
            random.set_rng_state(rng);
        }
        var saved = TrainerState.Load(dir);
        State.LogHistory.AddRange(saved.LogHistory);
        State.GlobalStep = saved.GlobalStep;
        State.Epoch = saved.Epoch;
        return saved.GlobalStep;
    }

    /// <summary>Each optimizer param group's learning rate as a multiple of the scheduled one (LoRA+ raises B's).</summary>
    readonly List<double> _groupLrScale = [];

    /// <summary>AdamW with HF's grouping: biases and norm weights get no weight decay.</summary>
    OptimizerHelper BuildOptimizer(List<(string name, Parameter parameter)> trainable)
    {
        var o = options;
        static bool NoDecay(string name) => name.EndsWith(".bias") || name.Contains("norm.weight");
        var groups = new List<AdamW.ParamGroup>();
        if (o.LoraPlusLrRatio is double ratio)
        {
            // PEFT's create_loraplus_optimizer as Axolotl calls it: lora_B and 1-D parameters at lr × ratio, the rest at
            // lr. Axolotl hands it no weight decay (HF keeps that in the param groups it replaces), so none applies.
            static bool IsB((string name, Parameter parameter) p) => p.name.Contains("lora_B") || p.parameter.dim() == 1;
            foreach (var (members, scale) in new[] { (trainable.Where(p => !IsB(p)), 1.0), (trainable.Where(IsB), ratio) })
            {
                var list = members.Select(p => p.parameter).ToList();
                if (list.Count == 0) continue;
                groups.Add(new AdamW.ParamGroup(list, o.LearningRate * scale, o.Beta1, o.Beta2, o.Epsilon, 0.0));
                _groupLrScale.Add(scale);
            }
            return optim.AdamW(groups, o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, 0.0);
        }
        var decay = trainable.Where(p => !NoDecay(p.name)).Select(p => p.parameter).ToList();
        var noDecay = trainable.Where(p => NoDecay(p.name)).Select(p => p.parameter).ToList();
        if (decay.Count > 0) groups.Add(new AdamW.ParamGroup(decay, o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay));
        if (noDecay.Count > 0) groups.Add(new AdamW.ParamGroup(noDecay, o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, 0.0));
        _groupLrScale.AddRange(groups.Select(_ => 1.0));
        return optim.AdamW(groups, o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay);
    }

    /// <summary>
    /// Loss on the validation split as transformers' evaluation loop reports it: each batch's mean token loss, averaged
    /// over batches weighted by their rows. Batches go in order, unshuffled.
    /// </summary>
    JsonObject Evaluate(IReadOnlyList<Example> eval, int step, double epoch)
    {
        var clock = Stopwatch.StartNew();
        model.eval();
        double weighted = 0;
        int rows = 0, batches = 0;
        using (no_grad())
            foreach (var batch in Collate(eval, Enumerable.Range(0, eval.Count).Chunk(options.EvalBatchSize ?? options.MicroBatchSize)))
            {
                using var scope = NewDisposeScope();
                var (sum, tokens) = model.LossSum(tensor(batch.InputIds, [batch.Rows, batch.Length]), tensor(batch.Labels, [batch.Rows, batch.Length]));
                batches++;
                if (tokens == 0) continue;
                weighted += sum.item<float>() / tokens * batch.Rows;
                rows += batch.Rows;
            }
        model.train();
        double loss = weighted / Math.Max(1, rows);
        double seconds = Math.Max(1e-9, clock.Elapsed.TotalSeconds);
        return new JsonObject
        {
            ["eval_loss"] = loss,
            ["eval_perplexity"] = Math.Exp(loss),
            ["eval_runtime"] = Math.Round(seconds, 4),
            ["eval_samples_per_second"] = Math.Round(eval.Count / seconds, 3),
            ["eval_steps_per_second"] = Math.Round(batches / seconds, 3),
            ["epoch"] = Math.Round(epoch, 6),
            ["step"] = step,
        };
    }

    sealed record Batch(long[] InputIds, long[] Labels, int Rows, int Length, long TrainableTokens, long RealTokens);

    /// <summary>Micro-batches of one epoch in a seeded order.</summary>
    IEnumerable<Batch> Batches(IReadOnlyList<Example> examples, int epoch)
    {
        var order = Enumerable.Range(0, examples.Count).ToList();
        DatasetBuilder.Shuffle(order, unchecked(options.Seed + epoch));
        return Collate(examples, order.Chunk(options.MicroBatchSize));
    }

    /// <summary>Each group of example indices as one batch, right-padded to its longest row.</summary>
    IEnumerable<Batch> Collate(IReadOnlyList<Example> examples, IEnumerable<int[]> groups)
    {
        foreach (var chunk in groups)
        {
            int length = chunk.Max(i => examples[i].InputIds.Length);
            var ids = new long[chunk.Length * length];
            var labels = new long[chunk.Length * length];
            long trainable = 0, real = 0;
            for (int r = 0; r < chunk.Length; r++)
            {
                var e = examples[chunk[r]];
                for (int t = 0; t < length; t++)
                {
                    bool inside = t < e.InputIds.Length;
                    ids[r * length + t] = inside ? e.InputIds[t] : options.PadTokenId;
                    labels[r * length + t] = inside ? e.Labels[t] : Example.IgnoreIndex;
                    // The first label is never predicted (the shift), so it is not a trainable token.
                    if (inside && t > 0 && e.Labels[t] != Example.IgnoreIndex) trainable++;
                }
                real += e.InputIds.Length;
            }
            yield return new Batch(ids, labels, chunk.Length, length, trainable, real);
        }
    }
}
