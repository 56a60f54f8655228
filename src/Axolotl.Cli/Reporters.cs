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

/// <summary>
/// The progress bar, redrawn by the training thread itself between steps (the display runs with AutoRefresh off):
/// Spectre's refresh thread allocates while the training thread is inside libtorch, and a garbage collection there can
/// free a temporary TorchSharp Scalar that a running native call still reads (see Runtime.QuietMemoryProbe).
/// </summary>
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
        context.Refresh();
    }

    public void OnStart(TrainingPlan plan)
    {
        if (_tokenizing != null) { _tokenizing.MaxValue = 1; _tokenizing.Value = 1; _tokenizing.StopTask(); }
        _plan = plan;
        AnsiConsole.MarkupLine(Markup.Escape(Format.Plan(plan)));
        _training = context.AddTask("training", maxValue: plan.TotalSteps);
        context.Refresh();
    }

    public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed)
    {
        _elapsed = elapsed;
        _training!.Value = step;
        _training.Description = Markup.Escape(
            $"step {step}/{_plan!.TotalSteps}  loss {loss:F4}  lr {learningRate.ToString("0.00e+0", CultureInfo.InvariantCulture)}  {Format.TokensPerSecond(tokensPerSecond)}");
        context.Refresh();
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

    /// <summary>
    /// One log_history entry as a console line: evaluation entries by their eval_ metrics, step entries by step, loss,
    /// grad_norm and learning rate, then whatever metrics the objective logged, then speed, memory and ETA. Any of them
    /// may be missing; nothing here knows which objective produced them.
    /// </summary>
    public static string LogLine(JsonObject e, TrainingPlan plan, TimeSpan elapsed)
    {
        int step = (int)e["step"]!;
        var parts = new List<string>();
        string Number(double v) => Math.Abs(v) is >= 1e-3 and < 1e5 or 0 ? v.ToString("F4", CultureInfo.InvariantCulture) : v.ToString("0.000e+0", CultureInfo.InvariantCulture);
        IEnumerable<(string Key, double Value)> Numbers(Func<string, bool> keep) =>
            e.Where(kv => keep(kv.Key) && kv.Value is JsonValue v && v.TryGetValue<double>(out _)).Select(kv => (kv.Key, kv.Value!.GetValue<double>()));
        if (e.Any(kv => kv.Key.StartsWith("eval_", StringComparison.Ordinal)))
        {
            parts.Add($"eval at step {step}/{plan.TotalSteps}");
            foreach (var (key, value) in Numbers(k => k.StartsWith("eval_", StringComparison.Ordinal) && !EvalSpeedKeys.Contains(k)))
                parts.Add(key == "eval_perplexity" ? $"perplexity {value.ToString("F2", CultureInfo.InvariantCulture)}" : $"{key} {Number(value)}");
            if (e["eval_runtime"] is { } runtime) parts.Add(string.Create(CultureInfo.InvariantCulture, $"{(double)runtime:F1} s"));
            return string.Join(" | ", parts);
        }
        var eta = TimeSpan.FromSeconds(elapsed.TotalSeconds / Math.Max(1, step) * (plan.TotalSteps - step));
        parts.Add($"step {step}/{plan.TotalSteps}");
        foreach (var (key, value) in Numbers(k => !StepKeys.Contains(k)))
            parts.Add(key == "learning_rate" ? $"lr {value.ToString("0.000e+0", CultureInfo.InvariantCulture)}" : $"{key} {Number(value)}");
        if (e["epoch"] is { } epoch) parts.Add(string.Create(CultureInfo.InvariantCulture, $"epoch {(double)epoch:F2}"));
        if (e["tokens_per_second"] is { } tps) parts.Add(TokensPerSecond((double)tps));
        if (e["mfu"] is { } mfu) parts.Add(string.Create(CultureInfo.InvariantCulture, $"mfu {(double)mfu:P1}"));
        parts.Add($"peak RSS {Runtime.Hardware.PeakRssKb() / 1024} MiB");
        if (Runtime.Hardware.PeakGpuMemoryInUseBytes() is > 0 and var gpu) parts.Add($"GPU memory {gpu >> 20} MiB");
        parts.Add($"ETA {eta:hh\\:mm\\:ss}");
        return string.Join(" | ", parts);
    }

    /// <summary>Slow runs (a big model on a CPU) get significant digits instead of "0 tok/s".</summary>
    public static string TokensPerSecond(double value) =>
        (value >= 10 ? value.ToString("F0", CultureInfo.InvariantCulture) : value.ToString("G3", CultureInfo.InvariantCulture)) + " tok/s";

    static readonly HashSet<string> StepKeys = ["step", "epoch", "tokens_per_second", "mfu"];
    static readonly HashSet<string> EvalSpeedKeys = ["eval_runtime", "eval_samples_per_second", "eval_steps_per_second"];
}
