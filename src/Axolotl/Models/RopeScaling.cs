using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// config.json's rope_scaling, as transformers' modeling_rope_utils reads it: the rotary inverse frequencies are
/// stretched (linear, llama3, yarn), recomputed from the sequence length (dynamic, longrope), and cos/sin may be
/// scaled by an attention factor (yarn, longrope).
/// </summary>
internal sealed record RopeScaling
{
    public required string Type { get; init; }
    public double Factor { get; init; } = 1;
    public double LowFreqFactor { get; init; } = 1;
    public double HighFreqFactor { get; init; } = 4;
    public int? OriginalMaxPositionEmbeddings { get; init; }
    public double? AttentionFactor { get; init; }
    public double BetaFast { get; init; } = 32;
    public double BetaSlow { get; init; } = 1;
    public double[]? LongFactor { get; init; }
    public double[]? ShortFactor { get; init; }

    public static readonly string[] Types = ["linear", "dynamic", "llama3", "yarn", "longrope"];

    /// <summary>Null for plain RoPE (no rope_scaling, or rope_type "default").</summary>
    public static RopeScaling? FromJson(JsonObject config, string source)
    {
        if (config["rope_scaling"] is not JsonObject s) return null;
        // Older configs say "type", newer "rope_type"; Phi-3's first releases called longrope "su".
        var type = (s["rope_type"] ?? s["type"])?.GetValue<string>()
                   ?? throw new UserError($"{source}: rope_scaling has no rope_type.");
        if (type == "su") type = "longrope";
        if (type == "default") return null;
        if (!Types.Contains(type))
            throw new UserError($"{source}: rope_scaling type '{type}' is not supported yet (supported: {string.Join(", ", Types)}).");
        double? Num(string key) => s[key]?.GetValue<double>();
        double[]? List(string key) => (s[key] as JsonArray)?.Select(x => x!.GetValue<double>()).ToArray();
        var scaling = new RopeScaling
        {
            Type = type,
            Factor = Num("factor") ?? (type == "longrope" ? 1 : throw new UserError($"{source}: rope_scaling ({type}) needs a factor.")),
            LowFreqFactor = Num("low_freq_factor") ?? 1,
            HighFreqFactor = Num("high_freq_factor") ?? 4,
            // llama3 and yarn carry it inside rope_scaling; Phi-3 at the top level.
            OriginalMaxPositionEmbeddings = (int?)(Num("original_max_position_embeddings") ?? config["original_max_position_embeddings"]?.GetValue<double>()),
            AttentionFactor = Num("attention_factor"),
            BetaFast = Num("beta_fast") ?? 32,
            BetaSlow = Num("beta_slow") ?? 1,
            LongFactor = List("long_factor"),
            ShortFactor = List("short_factor"),
        };
        if (type == "llama3" && scaling.OriginalMaxPositionEmbeddings is null)
            throw new UserError($"{source}: rope_scaling (llama3) needs original_max_position_embeddings.");
        if (type == "longrope" && (scaling.LongFactor is null || scaling.ShortFactor is null || scaling.OriginalMaxPositionEmbeddings is null))
            throw new UserError($"{source}: rope_scaling (longrope) needs long_factor, short_factor and original_max_position_embeddings.");
        return scaling;
    }

    /// <summary>Whether the frequencies depend on how long the sequence is, so they are recomputed per forward.</summary>
    public bool DependsOnLength => Type is "dynamic" or "longrope";

    /// <summary>
    /// Inverse frequencies [rotary_dim / 2] (fp32) and the factor cos/sin are multiplied by, for a forward whose
    /// positions reach <paramref name="seqLen"/> - 1.
    /// </summary>
    public static (Tensor InvFreq, double AttentionFactor) Frequencies(DecoderConfig c, long seqLen, Device device)
    {
        int dim = c.RotaryDim;
        var exponent = arange(0, dim, 2, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32) / dim;
        Tensor Plain(double theta) => 1.0f / full_like(exponent, theta).pow(exponent);
        var s = c.RopeScaling;
        if (s is null) return (Plain(c.RopeTheta), 1.0);
        int maxPositions = c.MaxPositionEmbeddings;
        switch (s.Type)
        {
            case "linear":
                return (Plain(c.RopeTheta) / s.Factor, 1.0);
            case "dynamic":
            {
                // NTK-aware: the base grows once the sequence outgrows max_position_embeddings.
                double length = Math.Max(seqLen, maxPositions);
                double theta = c.RopeTheta * Math.Pow(s.Factor * length / maxPositions - (s.Factor - 1), dim / (dim - 2.0));
                return (Plain(theta), 1.0);
            }
            case "llama3":
            {
                var invFreq = Plain(c.RopeTheta);
                double oldContext = s.OriginalMaxPositionEmbeddings!.Value;
                double lowWavelen = oldContext / s.LowFreqFactor, highWavelen = oldContext / s.HighFreqFactor;
                var wavelen = 2 * Math.PI / invFreq;
                // Long wavelengths are interpolated by factor, short ones kept, the band between blended smoothly.
                var scaled = where(wavelen > lowWavelen, invFreq / s.Factor, invFreq);
                var smooth = (oldContext / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                var smoothed = (1 - smooth) * scaled / s.Factor + smooth * scaled;
                var medium = (wavelen < highWavelen).logical_not().logical_and((wavelen > lowWavelen).logical_not());
                return (where(medium, smoothed, scaled), 1.0);
            }
            case "yarn":
            {
                int original = s.OriginalMaxPositionEmbeddings ?? maxPositions;
                double attention = s.AttentionFactor ?? (s.Factor > 1 ? 0.1 * Math.Log(s.Factor) + 1.0 : 1.0);
                double CorrectionDim(double rotations) => dim * Math.Log(original / (rotations * 2 * Math.PI)) / (2 * Math.Log(c.RopeTheta));
                double low = Math.Max(Math.Floor(CorrectionDim(s.BetaFast)), 0);
                double high = Math.Min(Math.Ceiling(CorrectionDim(s.BetaSlow)), dim - 1);
                if (low == high) high += 0.001;
                var posFreqs = full_like(exponent, c.RopeTheta).pow(exponent);
                var extrapolation = 1.0 / posFreqs;
                var interpolation = 1.0 / (s.Factor * posFreqs);
                var ramp = ((arange(dim / 2, dtype: ScalarType.Float32, device: device) - low) / (high - low)).clamp(0, 1);
                var extrapolationFactor = 1 - ramp;
                return (interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor, attention);
            }
            case "longrope":
            {
                int original = s.OriginalMaxPositionEmbeddings!.Value;
                double factor = c.Raw.ContainsKey("original_max_position_embeddings") ? (double)maxPositions / original : s.Factor;
                double attention = s.AttentionFactor ?? (factor <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
                var chosen = seqLen > original ? s.LongFactor! : s.ShortFactor!;
                if (chosen.Length != dim / 2)
                    throw new UserError($"rope_scaling (longrope): {chosen.Length} factors given for a rotary dimension of {dim} (needs {dim / 2}).");
                var ext = tensor(chosen.Select(x => (float)x).ToArray(), device: device);
                return (1.0f / (ext * full_like(exponent, c.RopeTheta).pow(exponent)), attention);
            }
            default:
                throw new InvalidOperationException(s.Type);
        }
    }
}
