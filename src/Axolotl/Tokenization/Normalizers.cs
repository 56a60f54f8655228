using System.Text.Json;

namespace Axolotl.Tokenization;

interface INormalizer { string Normalize(string text); }

sealed class PrependNormalizer(string prepend) : INormalizer
{
    public string Normalize(string text) => text.Length == 0 ? text : prepend + text;
}

sealed class ReplaceNormalizer(string pattern, string content) : INormalizer
{
    public string Normalize(string text) => pattern.Length == 0 ? text : text.Replace(pattern, content, StringComparison.Ordinal);
}

sealed class SequenceNormalizer(INormalizer[] steps) : INormalizer
{
    public string Normalize(string text)
    {
        foreach (var step in steps) text = step.Normalize(text);
        return text;
    }
}

// NFC and friends are left out on purpose: with InvariantGlobalization, string.Normalize leaves text unchanged.
static class Normalizers
{
    public static INormalizer? Parse(JsonElement json, string file)
    {
        if (json.ValueKind == JsonValueKind.Null) return null;
        var type = JsonRead.Type(json, file, "normalizer");
        return type switch
        {
            "Sequence" => new SequenceNormalizer(JsonRead.Array(json, "normalizers", file)
                .Select(e => Parse(e, file) ?? throw JsonRead.Invalid(file, "a null entry in a normalizer Sequence")).ToArray()),
            "Prepend" => new PrependNormalizer(JsonRead.String(json, "prepend", file)),
            "Replace" => new ReplaceNormalizer(JsonRead.StringPattern(json, file, "Replace normalizer"), JsonRead.String(json, "content", file)),
            _ => throw JsonRead.Unsupported(file, "normalizer", type),
        };
    }
}
