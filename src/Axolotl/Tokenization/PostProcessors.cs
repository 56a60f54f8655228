using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>Special tokens placed around the encoded sequence; a null item stands for the sequence itself.</summary>
sealed class SpecialTokenTemplate(IReadOnlyList<int[]?> items)
{
    public List<int> Apply(List<int> sequence)
    {
        var result = new List<int>(sequence.Count + items.Count);
        foreach (var item in items) result.AddRange(item ?? (IEnumerable<int>)sequence);
        return result;
    }
}

static class PostProcessors
{
    /// <summary>The single-sequence templates to apply in order; empty when the post-processor adds nothing.</summary>
    public static List<SpecialTokenTemplate> Parse(JsonElement json, string file)
    {
        if (json.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return [];
        var type = JsonRead.Type(json, file, "post_processor");
        switch (type)
        {
            case "ByteLevel": return []; // only adjusts offsets
            case "Sequence":
                return JsonRead.Array(json, "processors", file).SelectMany(p => Parse(p, file)).ToList();
            case "TemplateProcessing":
                var specials = new Dictionary<string, int[]>();
                if (JsonRead.Get(json, "special_tokens") is { ValueKind: JsonValueKind.Object } map)
                    foreach (var entry in map.EnumerateObject())
                        specials[entry.Name] = JsonRead.Array(entry.Value, "ids", file).Select(i => i.GetInt32()).ToArray();
                var items = new List<int[]?>();
                foreach (var piece in JsonRead.Array(json, "single", file))
                {
                    if (JsonRead.Get(piece, "Sequence") is { } seq)
                    {
                        if (JsonRead.String(seq, "id", file) != "A") throw JsonRead.Invalid(file, "the single template uses a sequence other than $A");
                        items.Add(null);
                    }
                    else if (JsonRead.Get(piece, "SpecialToken") is { } special)
                    {
                        var id = JsonRead.String(special, "id", file);
                        items.Add(specials.TryGetValue(id, out var ids) ? ids
                            : throw JsonRead.Invalid(file, $"the template names special token \"{id}\" without listing its ids"));
                    }
                    else throw JsonRead.Invalid(file, "a template piece that is neither Sequence nor SpecialToken");
                }
                return [new SpecialTokenTemplate(items)];
            case "RobertaProcessing":
            case "BertProcessing":
                return [new SpecialTokenTemplate([TokenId(json, "cls", file), null, TokenId(json, "sep", file)])];
            default:
                throw JsonRead.Unsupported(file, "post_processor", type);
        }
    }

    // Roberta/Bert processors store special tokens as ["<s>", 0].
    static int[] TokenId(JsonElement json, string name, string file) =>
        JsonRead.Get(json, name) is { ValueKind: JsonValueKind.Array } pair && pair.GetArrayLength() == 2 && pair[1].TryGetInt32(out var id)
            ? [id] : throw JsonRead.Invalid(file, $"\"{name}\" must be a [token, id] pair");
}
