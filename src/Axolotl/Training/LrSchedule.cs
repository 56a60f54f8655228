namespace Axolotl.Training;

/// <summary>
/// transformers' schedules as multipliers of the peak learning rate. <c>step</c> counts optimizer updates already
/// done, so the value at step 0 is the one the first update uses (LambdaLR semantics: warmup starts at zero).
/// </summary>
internal sealed record LrSchedule(string Kind, int WarmupSteps, int TotalSteps)
{
    /// <summary>cosine_min_lr_ratio: Axolotl's cosine decays to this fraction of the peak (unset or 0: HF's cosine to 0).</summary>
    public double? MinLrRatio { get; init; }
    /// <summary>cosine_constant_lr_ratio: with MinLrRatio, the floor is reached after this fraction of all steps and held.</summary>
    public double? ConstantLrRatio { get; init; }

    public double Multiplier(int step)
    {
        if (Kind == "constant") return 1.0;
        if (step < WarmupSteps) return (double)step / Math.Max(1, WarmupSteps);
        double remaining = Math.Max(1, TotalSteps - WarmupSteps);
        return Kind switch
        {
            "constant_with_warmup" => 1.0,
            "linear" => Math.Max(0.0, (TotalSteps - step) / remaining),
            "cosine" => Cosine(step, remaining),
            _ => throw new ArgumentOutOfRangeException(nameof(Kind), Kind, "unknown lr_scheduler"),
        };
    }

    /// <summary>Axolotl's create_scheduler: both ratios set (non-zero) → decay then constant; only the floor → cosine
    /// with a floor; otherwise transformers' cosine.</summary>
    double Cosine(int step, double remaining)
    {
        if (MinLrRatio is not (double min and not 0)) return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * ((step - WarmupSteps) / remaining))));
        if (ConstantLrRatio is not (double constant and not 0))
            return (1 - min) * 0.5 * (1.0 + Math.Cos(Math.PI * ((step - WarmupSteps) / remaining))) + min;
        int constantFrom = (int)(TotalSteps * constant);
        double progress = (Math.Min(step, constantFrom) - WarmupSteps) / (double)Math.Max(1, constantFrom - WarmupSteps);
        return Math.Max(0.0, (1 - min) * 0.5 * (1.0 + Math.Cos(Math.PI * progress))) + min;
    }

    /// <summary>Axolotl's warmup: warmup_steps if set, else ceil(warmup_ratio × total), else min(int(0.03 × total), 100).</summary>
    public static int ResolveWarmup(int? warmupSteps, double? warmupRatio, int totalSteps) =>
        warmupSteps ?? (warmupRatio is double r ? (int)Math.Ceiling(r * totalSteps) : Math.Min((int)(0.03 * totalSteps), 100));
}
