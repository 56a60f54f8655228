using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>The parts of a fast tokenizer, as tokenizer.json describes them (or a converter builds them).</summary>
sealed record Pipeline(INormalizer? Normalizer, IPreTokenizer? PreTokenizer, BpeModel Model,
    List<SpecialTokenTemplate> PostProcess, IDecoder? Decoder, List<AddedToken> AddedTokens)
{
    public static Pipeline FromJson(string file, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw JsonRead.Invalid(file, "the top level must be an object");
        var added = JsonRead.Get(root, "added_tokens") is { ValueKind: JsonValueKind.Array } list
            ? list.EnumerateArray().Select(t => Tokenizer.ReadAddedToken(t, file, special: false)).ToList() : [];
        return new Pipeline(
            Normalizers.Parse(JsonRead.Get(root, "normalizer") ?? default, file),
            PreTokenizers.Parse(JsonRead.Get(root, "pre_tokenizer") ?? default, file),
            ParseModel(JsonRead.Get(root, "model") ?? throw JsonRead.Invalid(file, "no \"model\""), file),
            PostProcessors.Parse(JsonRead.Get(root, "post_processor") ?? default, file),
            Decoders.Parse(JsonRead.Get(root, "decoder") ?? default, file),
            added);
    }

    static BpeModel ParseModel(JsonElement model, string file)
    {
        var type = JsonRead.OptionalString(model, "type", file) ?? (JsonRead.Get(model, "merges") is null ? "unknown" : "BPE");
        if (type != "BPE") throw JsonRead.Unsupported(file, "model", type);
        if (JsonRead.Get(model, "dropout") is { ValueKind: JsonValueKind.Number } dropout && dropout.GetDouble() > 0)
            throw new UserError($"{file}: BPE dropout is not supported; set \"dropout\" to null.");

        var vocab = new Dictionary<string, int>();
        if (JsonRead.Get(model, "vocab") is not { ValueKind: JsonValueKind.Object } vocabJson)
            throw JsonRead.Invalid(file, "the BPE model has no vocab object");
        foreach (var entry in vocabJson.EnumerateObject())
            vocab[entry.Name] = entry.Value.TryGetInt32(out var id) ? id : throw JsonRead.Invalid(file, $"vocab id of \"{entry.Name}\"");

        var merges = new List<(string, string)>();
        foreach (var merge in JsonRead.Array(model, "merges", file))
        {
            if (merge.ValueKind == JsonValueKind.String)
            {
                var line = merge.GetString()!;
                if (line.StartsWith("#version", StringComparison.Ordinal)) continue;
                var parts = line.Split(' ');
                if (parts.Length != 2) throw JsonRead.Invalid(file, $"merge \"{line}\" must be two tokens separated by one space");
                merges.Add((parts[0], parts[1]));
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
                     && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
                merges.Add((merge[0].GetString()!, merge[1].GetString()!));
            else throw JsonRead.Invalid(file, "a merge must be \"a b\" or [\"a\", \"b\"]");
        }

        return new BpeModel(vocab, merges, JsonRead.OptionalString(model, "unk_token", file),
            JsonRead.OptionalString(model, "continuing_subword_prefix", file), JsonRead.OptionalString(model, "end_of_word_suffix", file),
            JsonRead.Bool(model, "byte_fallback", false), JsonRead.Bool(model, "fuse_unk", false), JsonRead.Bool(model, "ignore_merges", false), file);
    }

}
