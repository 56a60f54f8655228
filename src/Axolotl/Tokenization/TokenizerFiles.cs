using Axolotl.Config;
using Axolotl.IO;

namespace Axolotl.Tokenization;

/// <summary>A tokenizer's files copied into an output folder, with what the config changed recorded as save_pretrained would.</summary>
internal static class TokenizerFiles
{
    static readonly string[] FileNames = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"];

    /// <summary>special_tokens as transformers' save_pretrained records them: in tokenizer_config.json and special_tokens_map.json.</summary>
    static void WriteSpecialTokens(Dictionary<string, string>? specialTokens, string dir)
    {
        if (specialTokens is not { Count: > 0 }) return;
        foreach (var name in new[] { "tokenizer_config.json", "special_tokens_map.json" })
        {
            var path = Path.Combine(dir, name);
            var json = File.Exists(path) ? JsonFiles.ReadObject(path) : new System.Text.Json.Nodes.JsonObject();
            foreach (var (key, value) in specialTokens) json[key] = value;
            AtomicFile.WriteAllText(path, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        }
    }

    /// <summary>
    /// The tokenizer files of <paramref name="from"/> into <paramref name="to"/>, with what the config changed recorded
    /// as save_pretrained would: special_tokens, and the added tokens (special_tokens and tokens new to the vocabulary).
    /// </summary>
    public static void CopyWithConfigChanges(string from, string to, AxolotlConfig config, Tokenizer tokenizer)
    {
        if (Path.GetFullPath(from) == Path.GetFullPath(to)) return;
        CopyFiles(from, to);
        WriteSpecialTokens(config.SpecialTokens, to);
        if (config.SpecialTokens is { Count: > 0 } || config.Tokens is { Count: > 0 }) tokenizer.WriteAddedTokens(to);
    }

    static void CopyFiles(string from, string to)
    {
        foreach (var name in FileNames)
        {
            var source = Path.Combine(from, name);
            if (File.Exists(source)) AtomicFile.Write(Path.Combine(to, name), s => { using var f = File.OpenRead(source); f.CopyTo(s); });
        }
    }
}
