using System.Text.Json.Nodes;
using Axolotl.Distributed;
using Axolotl.Models;

namespace Axolotl.Training;

/// <summary>
/// A hook into the training loop, as transformers' TrainerCallback: the loop calls these in order and acts on the
/// flags they set in <see cref="TrainerContext.Control"/> (log, evaluate, save, stop). Every method is optional.
/// </summary>
internal interface ITrainerCallback
{
    void OnTrainBegin(TrainerContext context) { }
    /// <summary>The whole accumulation window's gradients are in the parameters, before clipping and the optimizer step:
    /// where data-parallel ranks all-reduce them.</summary>
    void OnAfterBackward(TrainerContext context) { }
    /// <summary>After the optimizer step; <see cref="TrainerContext.LastStep"/> holds its figures. Sets what happens next.</summary>
    void OnStepEnd(TrainerContext context) { }
    void OnLog(TrainerContext context, JsonObject entry) { }
    /// <summary>After an evaluation, before the best metric is updated with it.</summary>
    void OnEvaluate(TrainerContext context, JsonObject metrics) { }
    void OnSave(TrainerContext context, string checkpoint) { }
    void OnTrainEnd(TrainerContext context) { }
}

/// <summary>What the loop does after the current step (reset every step), as transformers' TrainerControl.</summary>
internal sealed class TrainerControl
{
    public bool ShouldLog { get; set; }
    public bool ShouldEvaluate { get; set; }
    public bool ShouldSave { get; set; }
    /// <summary>Set to stop after this step (after its log, evaluation and save); the text is shown to the user.</summary>
    public string? StopReason { get; set; }
}

/// <summary>One optimizer step's figures: the loss and metrics of the window, averaged as the objective defines.</summary>
internal sealed record StepFigures(int Step, double Loss, IReadOnlyDictionary<string, double> Metrics, double GradNorm,
                                 double NextLearningRate, double TokensPerSecond, TimeSpan Elapsed, double EpochProgress);

/// <summary>What callbacks see of the run.</summary>
internal sealed class TrainerContext
{
    public required CausalLM Model { get; init; }
    public required TrainingOptions Options { get; init; }
    public required TrainingPlan Plan { get; init; }
    public required TrainerState State { get; init; }
    public required TrainingOptimizer Optimizer { get; init; }
    public required ICollectives Collectives { get; init; }
    public TrainerControl Control { get; } = new();
    public int Step { get; internal set; }
    public StepFigures? LastStep { get; internal set; }
}

/// <summary>transformers' DefaultFlowCallback: logs, evaluates and saves at their intervals (and logs the last step).</summary>
internal sealed class IntervalCallback(int loggingSteps, int evalSteps, int saveSteps) : ITrainerCallback
{
    public void OnStepEnd(TrainerContext c)
    {
        c.Control.ShouldLog |= c.Step % loggingSteps == 0 || c.Step == c.Plan.TotalSteps;
        c.Control.ShouldEvaluate |= evalSteps > 0 && c.Step % evalSteps == 0;
        c.Control.ShouldSave |= saveSteps > 0 && c.Step % saveSteps == 0;
    }
}

/// <summary>
/// Axolotl's LossWatchDogCallback: at each step end, before that step's log, the last logged loss is compared with the
/// threshold; after <c>patience</c> step ends in a row above it, training stops.
/// </summary>
internal sealed class LossWatchdogCallback(double threshold, int patience) : ITrainerCallback
{
    int _violations;

    public void OnStepEnd(TrainerContext c)
    {
        if (c.State.LogHistory.Count > 0 && c.State.LogHistory[^1]["loss"] is JsonNode lastLoss)
            _violations = (double)lastLoss > threshold ? _violations + 1 : 0;
        if (_violations >= patience)
            c.Control.StopReason = $"Loss watchdog: the logged loss stayed above loss_watchdog_threshold {threshold} for {patience} steps; stopped after step {c.Step} of {c.Plan.TotalSteps}.";
    }
}

/// <summary>
/// transformers' EarlyStoppingCallback (threshold 0): an evaluation not strictly better than the best before it counts
/// one; <c>patience</c> in a row stops training. The counter lives in the trainer state, so it survives a resume.
/// </summary>
internal sealed class EarlyStoppingCallback(string metric, int patience, bool greaterIsBetter) : ITrainerCallback
{
    public void OnEvaluate(TrainerContext c, JsonObject metrics) => Judge(c.State, metrics, c.Control, c.Step, c.Plan.TotalSteps);

    internal bool Judge(TrainerState state, JsonObject metrics, TrainerControl control, int step, int totalSteps)
    {
        if (metrics[metric]?.GetValue<double>() is not double value) return false;
        state.EarlyStoppingPatienceCounter = IsBetter(state.BestMetric, value, greaterIsBetter) ? 0 : state.EarlyStoppingPatienceCounter + 1;
        if (state.EarlyStoppingPatienceCounter < patience) return false;
        control.StopReason ??= $"Early stopping: no better {metric} in {patience} evaluation(s) in a row; stopped after step {step} of {totalSteps}.";
        return true;
    }

    internal static bool IsBetter(double? best, double value, bool greaterIsBetter) =>
        best is not double b || (greaterIsBetter ? value > b : value < b);
}

/// <summary>Passes the loop's progress to an <see cref="ITrainingObserver"/> (the CLI's console, the metrics file).</summary>
internal sealed class ObserverCallback(ITrainingObserver observer) : ITrainerCallback
{
    public void OnTrainBegin(TrainerContext c) => observer.OnStart(c.Plan);
    public void OnStepEnd(TrainerContext c)
    {
        var s = c.LastStep!;
        observer.OnStep(s.Step, s.Loss, s.NextLearningRate, s.TokensPerSecond, s.Elapsed);
    }
    public void OnLog(TrainerContext c, JsonObject entry) => observer.OnLog(entry);
}
