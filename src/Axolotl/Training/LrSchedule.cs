using System.Globalization;
using System.Text.Json.Nodes;

namespace Axolotl.Training;

/// <summary>
/// transformers' schedules (get_scheduler) and Axolotl's own (rex, quadratic warmup, the cosine floor, jagged restarts)
/// as multipliers of the peak learning rate. <c>step</c> counts optimizer updates already done, so the value at step 0 is
/// the one the first update uses (LambdaLR semantics: warmup starts at zero).
/// </summary>
internal sealed record LrSchedule(string Kind, int WarmupSteps, int TotalSteps)
{
    /// <summary>The lr_scheduler values implemented, each with the lr_scheduler_kwargs its transformers function reads
    /// (constant, constant_with_warmup, inverse_sqrt and rex are built without them, so they ignore any).</summary>
    public static readonly IReadOnlyDictionary<string, string[]> Kwargs = new Dictionary<string, string[]>
    {
        ["linear"] = [], ["cosine"] = ["num_cycles"], ["cosine_with_restarts"] = ["num_cycles"], ["polynomial"] = ["lr_end", "power"],
        ["constant"] = [], ["constant_with_warmup"] = [], ["inverse_sqrt"] = [],
        ["cosine_with_min_lr"] = ["num_cycles", "min_lr", "min_lr_rate"],
        ["cosine_warmup_with_min_lr"] = ["num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"],
        ["warmup_stable_decay"] = ["num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio", "num_cycles"],
        ["rex"] = [],
    };

    /// <summary>cosine_min_lr_ratio: Axolotl's cosine (and rex) decays to this fraction of the peak (unset or 0: to 0).</summary>
    public double? MinLrRatio { get; init; }
    /// <summary>cosine_constant_lr_ratio: with MinLrRatio, the floor is reached after this fraction of all steps and held.</summary>
    public double? ConstantLrRatio { get; init; }
    /// <summary>lr_quadratic_warmup with cosine: the warmup rises as (step / warmup)².</summary>
    public bool QuadraticWarmup { get; init; }
    /// <summary>lr_scheduler_kwargs, passed to transformers' schedule function.</summary>
    public JsonObject? SchedulerKwargs { get; init; }
    /// <summary>The peak learning rate (polynomial's lr_end and cosine_with_min_lr's min_lr are absolute).</summary>
    public double LearningRate { get; init; } = 1.0;
    /// <summary>Axolotl's JaggedLRRestartScheduler around the schedule (jagged_restart_steps, ReLoRA's restarts).</summary>
    public JaggedRestarts? Jagged { get; init; }

    /// <summary>jagged_restart_steps, _warmup_steps (Axolotl: unset or 0 → 10), _anneal_steps (unset or 0 → 1) and the
    /// lowest scale, cosine_min_lr_ratio or 0.001.</summary>
    public sealed record JaggedRestarts(int Steps, int WarmupSteps, int AnnealSteps, double MinScale)
    {
        public double Scale(int s)
        {
            if (s < Steps - AnnealSteps) return 1;
            int inCycle = s % Steps;
            double t = inCycle < WarmupSteps ? Math.Min(1.0, (double)inCycle / WarmupSteps)
                : inCycle > Steps - AnnealSteps ? Math.Min(1.0, (double)(Steps - inCycle) / AnnealSteps)
                : 1;
            return t * (1 - MinScale) + MinScale;
        }
    }

    /// <remarks>torch's LRScheduler takes its first step at construction. A LambdaLR starts from last_epoch −1, so update
    /// k+1 reads the lambda at k; Axolotl's RexLR and JaggedLRRestartScheduler are built with last_epoch 0 and read it at
    /// k + 1.</remarks>
    public double Multiplier(int step)
    {
        if (Jagged is { } jagged) return At(step + 1) * jagged.Scale(step + 1);
        return At(Kind == "rex" ? step + 1 : step);
    }

    double At(int s)
    {
        if (Kind == "constant") return 1.0;
        if (Kind == "rex") return Rex(s);
        int w = WarmupSteps, total = TotalSteps;
        if (Kind == "cosine_warmup_with_min_lr") return CosineWarmupWithMinLr(s);
        if (Kind == "warmup_stable_decay") return WarmupStableDecay(s);
        if (s < w)
        {
            double linear = (double)s / Math.Max(1, w);
            return Kind == "cosine" && QuadraticWarmup ? linear * linear : linear;
        }
        double progress = (double)(s - w) / Math.Max(1, total - w);
        return Kind switch
        {
            "constant_with_warmup" => 1.0,
            "linear" => Math.Max(0.0, (double)(total - s) / Math.Max(1, total - w)),
            "cosine" when QuadraticWarmup => Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress))),
            "cosine" => Cosine(s, progress),
            "cosine_with_restarts" => progress >= 1.0 ? 0.0
                : Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * (Number("num_cycles", 1) * progress % 1.0)))),
            "polynomial" => Polynomial(s),
            "inverse_sqrt" => InverseSqrt(s),
            "cosine_with_min_lr" => Math.Max(0, 0.5 * (1.0 + Math.Cos(Math.PI * Number("num_cycles", 0.5) * 2.0 * progress)) * (1 - MinLrRate()) + MinLrRate()),
            _ => throw new ArgumentOutOfRangeException(nameof(Kind), Kind, "unknown lr_scheduler"),
        };
    }

    /// <summary>Axolotl's create_scheduler: both ratios set (non-zero) → decay then constant; only the floor → cosine
    /// with a floor; otherwise transformers' cosine (num_cycles from lr_scheduler_kwargs).</summary>
    double Cosine(int step, double progress)
    {
        if (MinLrRatio is not (double min and not 0))
            return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * Number("num_cycles", 0.5) * 2.0 * progress)));
        if (ConstantLrRatio is not (double constant and not 0))
            return (1 - min) * 0.5 * (1.0 + Math.Cos(Math.PI * progress)) + min;
        int constantFrom = (int)(TotalSteps * constant);
        double held = (Math.Min(step, constantFrom) - WarmupSteps) / (double)Math.Max(1, constantFrom - WarmupSteps);
        return Math.Max(0.0, (1 - min) * 0.5 * (1.0 + Math.Cos(Math.PI * held))) + min;
    }

    /// <summary>transformers' polynomial decay from the peak to lr_end (default 1e-7) with power (default 1).</summary>
    double Polynomial(int s)
    {
        double lrEnd = Number("lr_end", 1e-7), power = Number("power", 1.0);
        if (s > TotalSteps) return lrEnd / LearningRate;
        double remaining = 1 - (double)(s - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return ((LearningRate - lrEnd) * Math.Pow(remaining, power) + lrEnd) / LearningRate;
    }

    /// <summary>transformers' inverse_sqrt: timescale = warmup steps (or 10,000 without warmup); get_scheduler passes no kwargs.</summary>
    double InverseSqrt(int s)
    {
        int timescale = WarmupSteps > 0 ? WarmupSteps : 10_000;
        return 1.0 / Math.Sqrt((double)(s + timescale - WarmupSteps) / timescale);
    }

    double MinLrRate()
    {
        if (SchedulerKwargs?["min_lr"] != null) return Number("min_lr", 0) / LearningRate;
        return Number("min_lr_rate", 0);
    }

    /// <summary>transformers' cosine_warmup_with_min_lr: warmup from 1/warmup (or warmup_lr_rate), decay measured one step ahead.</summary>
    double CosineWarmupWithMinLr(int s)
    {
        double w = WarmupSteps, total = TotalSteps, minRate = MinLrRate();
        if (s < w)
            return SchedulerKwargs?["warmup_lr_rate"] != null
                ? Number("warmup_lr_rate", 0) + (1 - Number("warmup_lr_rate", 0)) * s / Math.Max(1, w - 1)
                : (s + 1.0) / Math.Max(1.0, w);
        double progress = (s - w + 1.0) / Math.Max(1.0, total - w);
        return Math.Max(0, 0.5 * (1.0 + Math.Cos(Math.PI * Number("num_cycles", 0.5) * 2.0 * progress)) * (1 - minRate) + minRate);
    }

    /// <summary>transformers' warmup_stable_decay: warmup (linear, cosine or 1-sqrt) from min_lr_ratio, a flat stretch,
    /// then num_decay_steps of decay (cosine by default) to min_lr_ratio, held after.</summary>
    double WarmupStableDecay(int s)
    {
        int w = WarmupSteps, decay = (int)Number("num_decay_steps", 0);
        int stable = SchedulerKwargs?["num_stable_steps"] != null ? (int)Number("num_stable_steps", 0) : TotalSteps - w - decay;
        double min = Number("min_lr_ratio", 0);
        if (s < w)
        {
            double progress = (double)s / Math.Max(1, w);
            double factor = Text("warmup_type", "linear") switch
            {
                "cosine" => 0.5 * (1.0 - Math.Cos(Math.PI * progress)),
                "1-sqrt" => 1.0 - Math.Sqrt(1.0 - progress),
                _ => progress,
            };
            return Math.Max(0.0, factor * (1.0 - min) + min);
        }
        if (s < w + stable) return 1.0;
        if (s < w + stable + decay)
        {
            double progress = (double)(s - w - stable) / Math.Max(1, decay);
            double factor = Text("decay_type", "cosine") switch
            {
                "linear" => 1.0 - progress,
                "1-sqrt" => 1.0 - Math.Sqrt(progress),
                _ => 0.5 * (1.0 + Math.Cos(Math.PI * Number("num_cycles", 0.5) * 2.0 * progress)),
            };
            return Math.Max(0.0, factor * (1.0 - min) + min);
        }
        return min;
    }

    /// <summary>Axolotl's RexLR read at last_step <paramref name="s"/>: linear warmup from 1/warmup, then the reflected
    /// exponential z / (0.1 + 0.9 z) from the peak to the floor (cosine_min_lr_ratio, else 0).</summary>
    double Rex(int s)
    {
        int w = WarmupSteps;
        if (1 <= s && s <= w) return (double)s / w;
        double min = MinLrRatio ?? 0;
        int after = s - w, remaining = TotalSteps - w;
        if (after >= remaining || after == -1 || remaining <= 0) return min;
        double z = (double)(remaining - after % remaining) / remaining;
        return min + (1.0 - min) * (z / (0.1 + 0.9 * z));
    }

    double Number(string key, double fallback) => SchedulerKwargs?[key] switch
    {
        null => fallback,
        JsonValue v when v.TryGetValue<double>(out var d) => d,
        JsonValue v when v.TryGetValue<long>(out var l) => l,
        JsonValue v when v.TryGetValue<int>(out var i) => i,
        var node => double.Parse(node.ToString(), CultureInfo.InvariantCulture),
    };

    string Text(string key, string fallback) => SchedulerKwargs?[key]?.ToString() ?? fallback;

    /// <summary>Axolotl's warmup: warmup_steps if set, else ceil(warmup_ratio × total), else min(int(0.03 × total), 100).</summary>
    public static int ResolveWarmup(int? warmupSteps, double? warmupRatio, int totalSteps) =>
        warmupSteps ?? (warmupRatio is double r ? (int)Math.Ceiling(r * totalSteps) : Math.Min((int)(0.03 * totalSteps), 100));
}
