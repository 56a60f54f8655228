using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>Small readers for tokenizer.json that turn a malformed file into a <see cref="UserError"/> naming it.</summary>
static class JsonRead
{
    public static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new UserError($"{path} is not valid JSON: {e.Message}", e); }
        catch (UnauthorizedAccessException e) { throw new UserError($"{path} cannot be read: {e.Message}", e); }
    }

    public static UserError Unsupported(string file, string component, string type) =>
        new($"{file}: the {component} type \"{type}\" is not supported (supported: {Supported(component)}).");

    public static UserError Invalid(string file, string what) => new($"{file}: unexpected content ({what}).");

    static string Supported(string component) => component switch
    {
        "model" => "BPE",
        "normalizer" => "Sequence, Prepend, Replace, Lowercase, Strip, NFC, NFD, NFKC, NFKD",
        "pre_tokenizer" => "ByteLevel, Split, Sequence, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit",
        "post_processor" => "TemplateProcessing, ByteLevel, RobertaProcessing, Sequence",
        "decoder" => "ByteLevel, Metaspace, Replace with a String pattern, ByteFallback, Fuse, Strip, Sequence",
        _ => "none",
    };

    public static JsonElement? Get(JsonElement obj, string name) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public static string Type(JsonElement obj, string file, string component) =>
        Get(obj, "type") is { ValueKind: JsonValueKind.String } t ? t.GetString()! : throw Invalid(file, $"a {component} without a \"type\"");

    public static string String(JsonElement obj, string name, string file) =>
        Get(obj, name) is { ValueKind: JsonValueKind.String } v ? v.GetString()! : throw Invalid(file, $"\"{name}\" must be a string");

    public static string? OptionalString(JsonElement obj, string name, string file) =>
        Get(obj, name) switch
        {
            null => null,
            { ValueKind: JsonValueKind.String } v => v.GetString(),
            _ => throw Invalid(file, $"\"{name}\" must be a string"),
        };

    public static bool Bool(JsonElement obj, string name, bool fallback) =>
        Get(obj, name) is { } v && (v.ValueKind is JsonValueKind.True or JsonValueKind.False) ? v.GetBoolean() : fallback;

    public static int Int(JsonElement obj, string name, string file) =>
        Get(obj, name) is { ValueKind: JsonValueKind.Number } v && v.TryGetInt32(out var i) ? i : throw Invalid(file, $"\"{name}\" must be an integer");

    public static IEnumerable<JsonElement> Array(JsonElement obj, string name, string file) =>
        Get(obj, name) is { ValueKind: JsonValueKind.Array } v ? v.EnumerateArray() : throw Invalid(file, $"\"{name}\" must be an array");

    /// <summary>Reads a <c>{"String": "..."}</c> pattern; the <c>{"Regex": ...}</c> form would need Oniguruma semantics.</summary>
    public static string StringPattern(JsonElement obj, string file, string component)
    {
        var pattern = Get(obj, "pattern") ?? throw Invalid(file, $"{component} without a pattern");
        if (Get(pattern, "String") is { ValueKind: JsonValueKind.String } s) return s.GetString()!;
        throw new UserError($"{file}: the {component} uses a Regex pattern, which is not supported (only String patterns are).");
    }
}
