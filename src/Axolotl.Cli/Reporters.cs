using System.Globalization;
using System.Text.Json.Nodes;
using Axolotl.Recipes;
using Axolotl.Training;
using Spectre.Console;

namespace Axolotl.Cli;

/// <summary>Line-per-log output for pipes and CI logs.</summary>
sealed class PlainReporter : IRecipeReporter
{
    TrainingPlan? _plan;
    TimeSpan _elapsed;

    public void Info(string message) => Console.WriteLine(message);
    public void Warn(string message) => Console.WriteLine($"warning: {message}");

    public void OnStart(TrainingPlan plan)
    {
        _plan = plan;
        Console.WriteLine(Format.Plan(plan));
    }

    public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) => _elapsed = elapsed;

    public void OnLog(JsonObject entry) => Console.WriteLine(Format.LogLine(entry, _plan!, _elapsed));
}

/// <summary>Messages on stderr, for commands whose stdout is their result (inference).</summary>
sealed class StderrReporter : IRecipeReporter
{
    public void Info(string message) => Console.Error.WriteLine(message);
    public void Warn(string message) => Console.Error.WriteLine($"warning: {message}");
}

/// <summary>A live progress bar with the latest loss, learning rate, throughput and ETA.</summary>
sealed class ProgressReporter(ProgressContext context) : IRecipeReporter
{
    ProgressTask? _tokenizing, _training;
    TrainingPlan? _plan;
    TimeSpan _elapsed;

    public void Info(string message) => AnsiConsole.MarkupLine(Markup.Escape(message));
    public void Warn(string message) => AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(message)}");

    public void OnTokenizing(int rowsDone)
    {
        _tokenizing ??= context.AddTask("tokenizing", maxValue: double.MaxValue);
        _tokenizing.Description = $"tokenizing: {rowsDone} rows";
    }

    public void OnStart(TrainingPlan plan)
    {
        if (_tokenizing != null) { _tokenizing.MaxValue = 1; _tokenizing.Value = 1; _tokenizing.StopTask(); }
        _plan = plan;
        AnsiConsole.MarkupLine(Markup.Escape(Format.Plan(plan)));
        _training = context.AddTask("training", maxValue: plan.TotalSteps);
    }

    public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed)
    {
        _elapsed = elapsed;
        _training!.Value = step;
        _training.Description = Markup.Escape(
            $"step {step}/{_plan!.TotalSteps}  loss {loss:F4}  lr {learningRate.ToString("0.00e+0", CultureInfo.InvariantCulture)}  {tokensPerSecond:F0} tok/s");
    }

    public void OnLog(JsonObject entry) => AnsiConsole.MarkupLine(Markup.Escape(Format.LogLine(entry, _plan!, _elapsed)));
}

static class Format
{
    public static string Plan(TrainingPlan p) =>
        $"Training: {p.TotalSteps} steps ({p.Epochs} epoch(s) of {p.StepsPerEpoch}), warmup {p.WarmupSteps}, logging every {p.LoggingSteps}; " +
        $"{p.TrainableParameters:N0} of {p.TotalParameters:N0} parameters trainable ({100.0 * p.TrainableParameters / p.TotalParameters:F2}%)" +
        (p.PackingEfficiency is double efficiency
            ? string.Create(CultureInfo.InvariantCulture, $"; sample packing: {p.BatchesPerEpoch} packed micro-batches per epoch, efficiency {efficiency:F4} (tokens / slots).")
            : ".");

    /// <summary>Three significant figures below 100 (0.243, 7.41, 74.1), whole numbers above: a slow run must not read "0 tok/s".</summary>
    public static string Rate(double perSecond) =>
        perSecond >= 100 ? perSecond.ToString("F0", CultureInfo.InvariantCulture)
        : perSecond.ToString(perSecond >= 10 ? "F1" : perSecond >= 1 ? "F2" : "G3", CultureInfo.InvariantCulture);

    public static string LogLine(JsonObject e, TrainingPlan plan, TimeSpan elapsed)
    {
        if (e["eval_loss"] is { } evalLoss)
            return string.Create(CultureInfo.InvariantCulture,
                $"eval at step {(int)e["step"]!}/{plan.TotalSteps} | eval_loss {(double)evalLoss:F4} | perplexity {(double)e["eval_perplexity"]!:F2} | {(double)e["eval_runtime"]!:F1} s");
        int step = (int)e["step"]!;
        var eta = TimeSpan.FromSeconds(elapsed.TotalSeconds / Math.Max(1, step) * (plan.TotalSteps - step));
        return string.Create(CultureInfo.InvariantCulture,
            $"step {step}/{plan.TotalSteps} | loss {(double)e["loss"]!:F4} | grad_norm {(double)e["grad_norm"]!:F4} | lr {(double)e["learning_rate"]!:0.000e+0} | epoch {(double)e["epoch"]!:F2} | {Rate((double)e["tokens_per_second"]!)} tok/s{(e["mfu"] is { } mfu ? $" | mfu {(double)mfu:P1}" : "")} | peak RSS {Runtime.Hardware.PeakRssKb() / 1024} MiB{(Runtime.Hardware.PeakGpuMemoryInUseBytes() is > 0 and var gpu ? $" | GPU memory {gpu >> 20} MiB" : "")} | ETA {eta:hh\\:mm\\:ss}");
    }
}
