using System.Text.Json;

namespace Axolotl.Distributed;

/// <summary>
/// The one thing read from a <c>deepspeed:</c> JSON file (Axolotl's deepspeed_configs/zero1.json, zero2.json, ...):
/// <c>zero_optimization.stage</c>. Batch sizes, precision and the like come from the Axolotl config, as Axolotl fills
/// DeepSpeed's "auto" values from it.
/// </summary>
internal static class DeepSpeedConfig
{
    /// <summary>The ZeRO stage (0 when the file names none); relative paths are tried from the working directory, then
    /// from the config file's folder.</summary>
    public static int ZeroStage(string deepspeed, string configPath)
    {
        var file = File.Exists(deepspeed) ? deepspeed
            : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(configPath)) ?? "", deepspeed) is var beside && File.Exists(beside) ? beside
            : throw new UserError($"{configPath}: 'deepspeed' names {deepspeed}, which does not exist; point it at a DeepSpeed JSON such as {{\"zero_optimization\": {{\"stage\": 2}}}}.");
        int stage;
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllText(file), new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            stage = json.RootElement.TryGetProperty("zero_optimization", out var zero) && zero.TryGetProperty("stage", out var s)
                ? s.ValueKind == JsonValueKind.Number ? s.GetInt32() : int.Parse(s.GetString()!) : 0;
        }
        catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
        {
            throw new UserError($"{file}: not a DeepSpeed JSON config with a numeric zero_optimization.stage ({e.Message.Split('\n')[0]}).");
        }
        return stage switch
        {
            0 or 1 or 2 => stage,
            3 => throw new UserError($"{file}: ZeRO stage 3 (parameters sharded across processes and gathered layer by layer) is not built yet; use stage 1 (sharded optimizer state) or 2 (also sharded gradients)."),
            _ => throw new UserError($"{file}: zero_optimization.stage must be 0, 1, 2 or 3, not {stage}."),
        };
    }
}
