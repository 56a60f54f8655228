using System.Text;
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

sealed class RegexReplaceNormalizer(RegexPattern pattern, string content) : INormalizer
{
    public string Normalize(string text) => pattern.Replace(text, content);
}

/// <summary>Rust's <c>str::to_lowercase</c>: .NET's invariant lowering, plus the one full (multi-character) mapping,
/// U+0130 → "i̇", that the simple mapping lacks.</summary>
sealed class LowercaseNormalizer : INormalizer
{
    public string Normalize(string text)
    {
        if (!text.Contains('\u0130')) return text.ToLowerInvariant();
        return string.Join("i\u0307", text.Split('\u0130').Select(part => part.ToLowerInvariant()));
    }
}

/// <summary>tokenizers' Strip: removes White_Space from either end.</summary>
sealed class StripNormalizer(bool left, bool right) : INormalizer
{
    public string Normalize(string text)
    {
        int start = 0, end = text.Length;
        if (left) while (start < end && UnicodeClass.IsWhiteSpace(text[start])) start++;
        if (right) while (end > start && UnicodeClass.IsWhiteSpace(text[end - 1])) end--;
        return start == 0 && end == text.Length ? text : text[start..end];
    }
}

sealed class UnicodeNormalizer(NormalizationForm form) : INormalizer
{
    public string Normalize(string text) => UnicodeNormalization.Normalize(text, form);
}

sealed class SequenceNormalizer(INormalizer[] steps) : INormalizer
{
    public string Normalize(string text)
    {
        foreach (var step in steps) text = step.Normalize(text);
        return text;
    }
}

static class Normalizers
{
    public static INormalizer? Parse(JsonElement json, string file)
    {
        if (json.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        var type = JsonRead.Type(json, file, "normalizer");
        return type switch
        {
            "Sequence" => new SequenceNormalizer(JsonRead.Array(json, "normalizers", file)
                .Select(e => Parse(e, file) ?? throw JsonRead.Invalid(file, "a null entry in a normalizer Sequence")).ToArray()),
            "Prepend" => new PrependNormalizer(JsonRead.String(json, "prepend", file)),
            "Replace" => JsonRead.Get(JsonRead.Get(json, "pattern") ?? default, "String") is { ValueKind: JsonValueKind.String } s
                ? new ReplaceNormalizer(s.GetString()!, JsonRead.String(json, "content", file))
                : new RegexReplaceNormalizer(RegexPattern.FromJson(json, file, "Replace normalizer"), JsonRead.String(json, "content", file)),
            "Lowercase" => new LowercaseNormalizer(),
            "Strip" => new StripNormalizer(JsonRead.Bool(json, "strip_left", true), JsonRead.Bool(json, "strip_right", true)),
            "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
            "NFD" => new UnicodeNormalizer(NormalizationForm.FormD),
            "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC),
            "NFKD" => new UnicodeNormalizer(NormalizationForm.FormKD),
            _ => throw JsonRead.Unsupported(file, "normalizer", type),
        };
    }
}
