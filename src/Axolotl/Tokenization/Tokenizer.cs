using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>
/// A Hugging Face fast tokenizer read from <c>tokenizer.json</c>, producing the ids that the Rust <c>tokenizers</c>
/// library produces for it, with the special-token handling that transformers layers on top from
/// <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>. Immutable after loading; safe to use from many threads.
/// </summary>
public sealed class Tokenizer
{
    static readonly string[] SpecialTokenKeys = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

    // transformers classes whose fast tokenizer rebuilds its post-processor from add_bos_token/add_eos_token,
    // with their constructor defaults for special tokens not named in the config.
    static readonly Dictionary<string, Dictionary<string, string>> ClassDefaults = new()
    {
        ["LlamaTokenizer"] = new() { ["unk_token"] = "<unk>", ["bos_token"] = "<s>", ["eos_token"] = "</s>" },
        ["CodeLlamaTokenizer"] = new() { ["unk_token"] = "<unk>", ["bos_token"] = "<s>", ["eos_token"] = "</s>" },
        ["GemmaTokenizer"] = new() { ["unk_token"] = "<unk>", ["bos_token"] = "<bos>", ["eos_token"] = "<eos>", ["pad_token"] = "<pad>" },
    };
    static readonly Dictionary<string, string> Gpt2Defaults =
        new() { ["unk_token"] = "<|endoftext|>", ["bos_token"] = "<|endoftext|>", ["eos_token"] = "<|endoftext|>" };

    readonly INormalizer? _normalizer;
    readonly IPreTokenizer? _preTokenizer;
    readonly BpeModel _model;
    readonly AddedVocabulary _added = new();
    readonly List<SpecialTokenTemplate> _postProcess;
    readonly IDecoder? _decoder;
    readonly bool _cleanUpSpaces;
    readonly Dictionary<string, string?> _specialTokens = new();

    /// <summary>Loads <c>tokenizer.json</c> plus, when present, <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>.</summary>
    public static Tokenizer FromFolder(string directory)
    {
        if (!Directory.Exists(directory)) throw new UserError($"Tokenizer folder {directory} does not exist.");
        var path = Path.Combine(directory, "tokenizer.json");
        if (!File.Exists(path))
            throw new UserError($"{path} is missing: only Hugging Face fast tokenizers (tokenizer.json) are supported.");
        using var tokenizer = JsonRead.Parse(path);
        using var config = ParseOptional(Path.Combine(directory, "tokenizer_config.json"));
        using var map = ParseOptional(Path.Combine(directory, "special_tokens_map.json"));
        try
        {
            return new Tokenizer(path, tokenizer.RootElement, config?.RootElement, map?.RootElement,
                Path.Combine(directory, "tokenizer_config.json"));
        }
        // A value of the wrong JSON kind deep in a component, which the readers do not check one by one.
        catch (InvalidOperationException e) { throw JsonRead.Invalid(path, e.Message.TrimEnd('.')); }
    }

    static JsonDocument? ParseOptional(string path) => File.Exists(path) ? JsonRead.Parse(path) : null;

    Tokenizer(string file, JsonElement root, JsonElement? config, JsonElement? map, string configFile)
    {
        if (root.ValueKind != JsonValueKind.Object) throw JsonRead.Invalid(file, "the top level must be an object");
        _normalizer = Normalizers.Parse(JsonRead.Get(root, "normalizer") ?? Null, file);
        _preTokenizer = PreTokenizers.Parse(JsonRead.Get(root, "pre_tokenizer") ?? Null, file);
        _model = ParseModel(JsonRead.Get(root, "model") ?? throw JsonRead.Invalid(file, "no \"model\""), file);
        _postProcess = PostProcessors.Parse(JsonRead.Get(root, "post_processor") ?? Null, file);
        _decoder = Decoders.Parse(JsonRead.Get(root, "decoder") ?? Null, file);

        if (JsonRead.Get(root, "added_tokens") is { ValueKind: JsonValueKind.Array } added)
            AddTokens(added.EnumerateArray().Select(t => ReadAddedToken(t, file, special: false)), replace: true);

        var cfg = config ?? Null;
        var className = JsonRead.Get(cfg, "tokenizer_class") is { ValueKind: JsonValueKind.String } c ? c.GetString()! : null;
        var baseClass = className?.EndsWith("Fast", StringComparison.Ordinal) == true ? className[..^4] : className;
        var defaults = baseClass is null ? null : ClassDefaults.GetValueOrDefault(baseClass) ?? (baseClass == "GPT2Tokenizer" ? Gpt2Defaults : null);
        ApplyConfigTokens(cfg, map ?? Null, defaults, configFile);
        _added.Build(_normalizer is null ? null : _normalizer.Normalize);
        _cleanUpSpaces = JsonRead.Bool(cfg, "clean_up_tokenization_spaces", false);

        bool rebuildsTemplate = baseClass is not null && ClassDefaults.ContainsKey(baseClass);
        bool? addBos = NullableBool(cfg, "add_bos_token"), addEos = NullableBool(cfg, "add_eos_token");
        if (rebuildsTemplate || addBos.HasValue || addEos.HasValue)
            _postProcess = [BosEosTemplate(addBos ?? rebuildsTemplate, addEos ?? false, configFile)];

        VocabSize = _model.Vocab.Count + _added.Contents.Count(t => !_model.Vocab.ContainsKey(t));
    }

    static readonly JsonElement Null = JsonDocument.Parse("null").RootElement;

    static bool? NullableBool(JsonElement obj, string name) =>
        JsonRead.Get(obj, name) is { ValueKind: JsonValueKind.True or JsonValueKind.False } v ? v.GetBoolean() : null;

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

    static AddedToken ReadAddedToken(JsonElement json, string file, bool special) => new(
        JsonRead.String(json, "content", file),
        JsonRead.Bool(json, "single_word", false), JsonRead.Bool(json, "lstrip", false), JsonRead.Bool(json, "rstrip", false),
        JsonRead.Bool(json, "normalized", !(special || JsonRead.Bool(json, "special", false))),
        special || JsonRead.Bool(json, "special", false));

    /// <summary>Ids as tokenizers' <c>add_tokens</c> gives them: the existing id of the content, else the next free one.</summary>
    void AddTokens(IEnumerable<AddedToken> tokens, bool replace)
    {
        int vocabSize = _model.Vocab.Count, maxId = _added.MaxId;
        int nextId = maxId < 0 ? vocabSize : maxId >= vocabSize || vocabSize == 0 ? maxId + 1 : vocabSize;
        foreach (var token in tokens)
        {
            if (token.Content.Length == 0) continue;
            var existing = _added.TokenToId(token.Content);
            if (existing is not null && !replace) continue;
            _added.Add(token, existing ?? _model.TokenToId(token.Content) ?? nextId++);
        }
    }

    /// <summary>
    /// transformers' view of special tokens: special_tokens_map.json over tokenizer_config.json over the class defaults.
    /// Tokens it names that tokenizer.json lacks become special added tokens, as transformers adds them on load.
    /// </summary>
    void ApplyConfigTokens(JsonElement config, JsonElement map, Dictionary<string, string>? defaults, string configFile)
    {
        // An explicit null in either file means "no such token", so presence is tested apart from the value.
        (AddedToken Token, bool Declared)? Lookup(JsonElement json, string key, out bool present)
        {
            JsonElement value = default;
            present = json.ValueKind == JsonValueKind.Object && json.TryGetProperty(key, out value);
            return present ? SpecialToken(value, configFile) : null;
        }

        var specials = new List<(AddedToken Token, bool Declared)>();
        foreach (var key in SpecialTokenKeys)
        {
            var token = Lookup(map, key, out var inMap);
            if (!inMap)
            {
                token = Lookup(config, key, out var inConfig);
                if (!inConfig && defaults?.GetValueOrDefault(key) is { } d) token = (new AddedToken(d, Special: true), false);
            }
            _specialTokens[key] = token?.Token.Content;
            if (token is { } t) specials.Add(t);
        }
        var additional = JsonRead.Get(map, "additional_special_tokens") ?? JsonRead.Get(config, "additional_special_tokens");
        if (additional is { ValueKind: JsonValueKind.Array } list)
            specials.AddRange(list.EnumerateArray().Select(e => SpecialToken(e, configFile)).OfType<(AddedToken, bool)>());
        var specialNames = specials.Select(s => s.Token.Content).ToHashSet();

        var fromConfig = new List<AddedToken>();
        if (JsonRead.Get(config, "added_tokens_decoder") is { ValueKind: JsonValueKind.Object } decoder)
        {
            foreach (var entry in decoder.EnumerateObject().OrderBy(e => int.TryParse(e.Name, out var i) ? i : int.MaxValue))
            {
                var token = ReadAddedToken(entry.Value, configFile, special: false);
                fromConfig.Add(specialNames.Contains(token.Content) ? token with { Special = true } : token);
            }
        }

        AddTokens(fromConfig.Concat(specials.Select(s => s.Token)), replace: false);
        // A special token given as an AddedToken object is re-added by transformers and so marked special.
        foreach (var (token, declared) in specials) if (declared) _added.MarkSpecial(token.Content);
    }

    static (AddedToken Token, bool Declared)? SpecialToken(JsonElement value, string file) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString() is { Length: > 0 } s ? (new AddedToken(s, Special: true), false) : null,
        JsonValueKind.Object => (ReadAddedToken(value, file, special: true), true),
        _ => null,
    };

    SpecialTokenTemplate BosEosTemplate(bool addBos, bool addEos, string configFile)
    {
        int[] Id(string key, string flag) =>
            _specialTokens.GetValueOrDefault(key) is { } token && TokenToId(token) is { } id ? [id]
                : throw new UserError($"{configFile} sets {flag} but defines no {key} in the vocabulary.");
        var items = new List<int[]?>();
        if (addBos) items.Add(Id("bos_token", "add_bos_token"));
        items.Add(null);
        if (addEos) items.Add(Id("eos_token", "add_eos_token"));
        return new SpecialTokenTemplate(items);
    }

    /// <summary>Number of distinct tokens: the model vocabulary plus added tokens not in it (<c>len(tokenizer)</c>).</summary>
    public int VocabSize { get; }

    public string? BosToken => _specialTokens.GetValueOrDefault("bos_token");
    public string? EosToken => _specialTokens.GetValueOrDefault("eos_token");
    public string? PadToken => _specialTokens.GetValueOrDefault("pad_token");
    public string? UnkToken => _specialTokens.GetValueOrDefault("unk_token");
    public int? BosTokenId => BosToken is null ? null : TokenToId(BosToken);
    public int? EosTokenId => EosToken is null ? null : TokenToId(EosToken);
    public int? PadTokenId => PadToken is null ? null : TokenToId(PadToken);
    public int? UnkTokenId => UnkToken is null ? null : TokenToId(UnkToken);

    public int? TokenToId(string token) => _added.TokenToId(token) ?? _model.TokenToId(token);
    public string? IdToToken(int id) => _added.IdToToken(id) ?? _model.IdToToken(id);

    /// <summary>The <c>input_ids</c> of <c>tokenizer(text, add_special_tokens=...)</c>.</summary>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 4);
        WordSink toModel = word => _model.Tokenize(word, ids);
        foreach (var (start, end, id) in _added.SplitRaw(text))
        {
            if (id >= 0) { ids.Add(id); continue; }
            var piece = start == 0 && end == text.Length ? text : text[start..end];
            var normalized = _normalizer?.Normalize(piece) ?? piece;
            foreach (var (from, to, addedId) in _added.SplitNormalized(normalized))
            {
                if (addedId >= 0) { ids.Add(addedId); continue; }
                var part = from == 0 && to == normalized.Length ? normalized : normalized[from..to];
                if (_preTokenizer is null) toModel(part);
                else _preTokenizer.PreTokenize(part, toModel);
            }
        }
        if (!addSpecialTokens) return ids;
        foreach (var template in _postProcess) ids = template.Apply(ids);
        return ids;
    }

    /// <summary><c>tokenizer.decode(ids, skip_special_tokens=...)</c>; unknown ids are skipped, as tokenizers does.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (var id in ids)
        {
            var token = IdToToken(id);
            if (token is null || (skipSpecialTokens && _added.IsSpecial(token))) continue;
            tokens.Add(token);
        }
        var text = _decoder is null ? string.Join(" ", tokens) : string.Concat(_decoder.DecodeChain(tokens));
        return _cleanUpSpaces ? CleanUpTokenizationSpaces(text) : text;
    }

    static string CleanUpTokenizationSpaces(string text) => text
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
        .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
}
