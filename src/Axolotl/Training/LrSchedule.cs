namespace Axolotl.Training;

/// <summary>
/// transformers' schedules as multipliers of the peak learning rate. <c>step</c> counts optimizer updates already
/// done, so the value at step 0 is the one the first update uses (LambdaLR semantics: warmup starts at zero).
/// </summary>
public sealed record LrSchedule(string Kind, int WarmupSteps, int TotalSteps)
{
    public double Multiplier(int step)
    {
        if (Kind == "constant") return 1.0;
        if (step < WarmupSteps) return (double)step / Math.Max(1, WarmupSteps);
        double remaining = Math.Max(1, TotalSteps - WarmupSteps);
        return Kind switch
        {
            "constant_with_warmup" => 1.0,
            "linear" => Math.Max(0.0, (TotalSteps - step) / remaining),
            "cosine" => Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * ((step - WarmupSteps) / remaining)))),
            _ => throw new ArgumentOutOfRangeException(nameof(Kind), Kind, "unknown lr_scheduler"),
        };
    }

    /// <summary>Axolotl's warmup: warmup_steps if set, else ceil(warmup_ratio × total), else min(int(0.03 × total), 100).</summary>
    public static int ResolveWarmup(int? warmupSteps, double? warmupRatio, int totalSteps) =>
        warmupSteps ?? (warmupRatio is double r ? (int)Math.Ceiling(r * totalSteps) : Math.Min((int)(0.03 * totalSteps), 100));
}
