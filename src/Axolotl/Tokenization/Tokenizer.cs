using System.Text.Json.Nodes;
using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>
/// A Hugging Face fast tokenizer read from <c>tokenizer.json</c> (or converted from a SentencePiece or tiktoken
/// <c>tokenizer.model</c>), producing the ids that the Rust <c>tokenizers</c> library produces for it, with the
/// special-token handling that transformers layers on top from <c>tokenizer_config.json</c> and
/// <c>special_tokens_map.json</c>. Encoding and decoding are safe from many threads; the methods that add tokens
/// (<see cref="AddTokens(IEnumerable{string}, bool)"/>, <see cref="SetSpecialToken"/>, <see cref="UpdatePostProcessor"/>)
/// are for setting it up before use.
/// </summary>
internal sealed class Tokenizer
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
    List<SpecialTokenTemplate> _postProcess;
    readonly IDecoder? _decoder;
    readonly bool _cleanUpSpaces;
    readonly Dictionary<string, string?> _specialTokens = new();
    readonly bool _rebuildsTemplate;
    readonly bool? _addBos, _addEos;
    readonly string _configFile;

    /// <summary>
    /// Loads a tokenizer folder as transformers' AutoTokenizer (use_fast) does: <c>tokenizer.json</c>, or else a
    /// SentencePiece or tiktoken <c>tokenizer.model</c> converted to the same pipeline, plus, when present,
    /// <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>.
    /// </summary>
    public static Tokenizer FromFolder(string directory)
    {
        if (!Directory.Exists(directory)) throw new UserError($"Tokenizer folder {directory} does not exist.");
        var configFile = Path.Combine(directory, "tokenizer_config.json");
        using var config = ParseOptional(configFile);
        using var map = ParseOptional(Path.Combine(directory, "special_tokens_map.json"));
        var path = Path.Combine(directory, "tokenizer.json");
        Pipeline pipeline;
        if (File.Exists(path))
        {
            using var tokenizer = JsonRead.Parse(path);
            // A value of the wrong JSON kind deep in a component, which the readers do not check one by one.
            try { pipeline = Pipeline.FromJson(path, tokenizer.RootElement); }
            catch (InvalidOperationException e) { throw JsonRead.Invalid(path, e.Message.TrimEnd('.')); }
        }
        else
        {
            var model = Path.Combine(directory, "tokenizer.model");
            if (!File.Exists(model))
                throw new UserError($"{path} is missing, and so is tokenizer.model: the folder holds no tokenizer this program reads.");
            pipeline = SlowTokenizerFiles.Convert(model, config?.RootElement ?? Null);
        }
        try { return new Tokenizer(pipeline, config?.RootElement, map?.RootElement, configFile); }
        catch (InvalidOperationException e) { throw JsonRead.Invalid(configFile, e.Message.TrimEnd('.')); }
    }

    static JsonDocument? ParseOptional(string path) => File.Exists(path) ? JsonRead.Parse(path) : null;

    Tokenizer(Pipeline pipeline, JsonElement? config, JsonElement? map, string configFile)
    {
        (_normalizer, _preTokenizer, _model, _postProcess, _decoder) =
            (pipeline.Normalizer, pipeline.PreTokenizer, pipeline.Model, pipeline.PostProcess, pipeline.Decoder);
        AddTokens(pipeline.AddedTokens, replace: true);

        var cfg = config ?? Null;
        var className = JsonRead.Get(cfg, "tokenizer_class") is { ValueKind: JsonValueKind.String } c ? c.GetString()! : null;
        var baseClass = className?.EndsWith("Fast", StringComparison.Ordinal) == true ? className[..^4] : className;
        var defaults = baseClass is null ? null : ClassDefaults.GetValueOrDefault(baseClass) ?? (baseClass == "GPT2Tokenizer" ? Gpt2Defaults : null);
        ApplyConfigTokens(cfg, map ?? Null, defaults, configFile);
        _added.Build(_normalizer is null ? null : _normalizer.Normalize);
        _cleanUpSpaces = JsonRead.Bool(cfg, "clean_up_tokenization_spaces", false);
        ModelMaxLength = JsonRead.Get(cfg, "model_max_length") is { ValueKind: JsonValueKind.Number } max
            && max.TryGetInt64(out var length) && length < VeryLargeInteger ? length : null;

        TokenizerClass = baseClass;
        _rebuildsTemplate = baseClass is not null && ClassDefaults.ContainsKey(baseClass);
        _addBos = NullableBool(cfg, "add_bos_token");
        _addEos = NullableBool(cfg, "add_eos_token");
        _configFile = configFile;
        if (_rebuildsTemplate || _addBos.HasValue || _addEos.HasValue) UpdatePostProcessor();
    }

    // transformers' VERY_LARGE_INTEGER (int(1e30)) stands for "no limit"; JSON gives it as 1000000000000000019884624838656.
    const long VeryLargeInteger = long.MaxValue;

    static readonly JsonElement Null = JsonDocument.Parse("null").RootElement;

    static bool? NullableBool(JsonElement obj, string name) =>
        JsonRead.Get(obj, name) is { ValueKind: JsonValueKind.True or JsonValueKind.False } v ? v.GetBoolean() : null;

    internal static AddedToken ReadAddedToken(JsonElement json, string file, bool special) => new(
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

    /// <summary>tokenizer_config.json's tokenizer_class without "Fast" (LlamaTokenizer, GPT2Tokenizer, ...), if given.</summary>
    public string? TokenizerClass { get; }

    /// <summary>LlamaTokenizerFast.update_post_processor: BOS/EOS around the text as add_bos_token/add_eos_token say,
    /// with the current bos_token/eos_token.</summary>
    public void UpdatePostProcessor()
    {
        _postProcess = [BosEosTemplate(_addBos ?? _rebuildsTemplate, _addEos ?? false, _configFile)];
    }

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

    /// <summary>
    /// <c>tokenizer.add_tokens([AddedToken(t, rstrip=False, lstrip=False, normalized=False)])</c>, as Axolotl adds the
    /// config's <c>tokens</c>: each new text gets the next free id. Returns how many were new. Not thread-safe: add
    /// tokens before encoding from several threads.
    /// </summary>
    public int AddTokens(IEnumerable<string> tokens, bool special = false)
    {
        int before = VocabSize;
        AddTokens(tokens.Where(t => !string.IsNullOrEmpty(t)).Select(t => new AddedToken(t, Normalized: false, Special: special)), replace: false);
        _added.Build(_normalizer is null ? null : _normalizer.Normalize);
        return VocabSize - before;
    }

    /// <summary>
    /// <c>tokenizer.add_special_tokens({key: AddedToken(content, rstrip=False, lstrip=False, normalized=False)})</c>:
    /// sets bos_token, eos_token, pad_token, unk_token (or sep/cls/mask) to <paramref name="content"/>, adding it as a
    /// special token when the vocabulary lacks it. Like transformers, this leaves the post-processor alone: call
    /// <see cref="UpdatePostProcessor"/> for the new BOS/EOS to be added by <see cref="Encode"/>. Returns whether a new token was added.
    /// </summary>
    public bool SetSpecialToken(string key, string content)
    {
        if (!SpecialTokenKeys.Contains(key))
            throw new UserError($"special_tokens: \"{key}\" is not a special token name (use one of {string.Join(", ", SpecialTokenKeys)}).");
        if (string.IsNullOrEmpty(content)) throw new UserError($"special_tokens: {key} must not be empty.");
        int before = VocabSize;
        var token = new AddedToken(content, Normalized: false, Special: true);
        if (_added.TokenToId(content) is { } existing) _added.Add(token, existing); // re-added as special, like transformers
        else AddTokens([token], replace: false);
        _added.Build(_normalizer is null ? null : _normalizer.Normalize);
        _specialTokens[key] = content;
        return VocabSize > before;
    }

    /// <summary>
    /// Writes this tokenizer's added tokens (those of the files plus any added since, e.g. from the config's
    /// special_tokens and tokens) into a copy of its files, as save_pretrained records them: tokenizer.json's
    /// <c>added_tokens</c> and tokenizer_config.json's <c>added_tokens_decoder</c>. Everything else in the files is kept.
    /// </summary>
    public void WriteAddedTokens(string folder)
    {
        static JsonObject Entry(AddedToken t) => new()
        {
            ["content"] = t.Content, ["single_word"] = t.SingleWord, ["lstrip"] = t.LStrip, ["rstrip"] = t.RStrip,
            ["normalized"] = t.Normalized, ["special"] = t.Special,
        };
        var options = new JsonSerializerOptions { WriteIndented = true };
        var tokenizerJson = Path.Combine(folder, "tokenizer.json");
        if (File.Exists(tokenizerJson))
        {
            var root = IO.JsonFiles.ReadObject(tokenizerJson);
            var list = new JsonArray();
            foreach (var (id, token) in _added.All)
            {
                var entry = Entry(token);
                entry.Insert(0, "id", id);
                list.Add(entry);
            }
            root["added_tokens"] = list;
            IO.AtomicFile.WriteAllText(tokenizerJson, root.ToJsonString(options));
        }
        var configJson = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(configJson))
        {
            var root = IO.JsonFiles.ReadObject(configJson);
            var decoder = new JsonObject();
            foreach (var (id, token) in _added.All) decoder[id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = Entry(token);
            root["added_tokens_decoder"] = decoder;
            IO.AtomicFile.WriteAllText(configJson, root.ToJsonString(options));
        }
    }

    /// <summary>Number of distinct tokens: the model vocabulary plus added tokens not in it (<c>len(tokenizer)</c>).</summary>
    public int VocabSize => _model.Vocab.Count + _added.Contents.Count(t => !_model.Vocab.ContainsKey(t));

    /// <summary>model_max_length from tokenizer_config.json; null when absent or transformers' "no limit" value.</summary>
    public long? ModelMaxLength { get; }

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
        PieceSink toModel = (word, _) => _model.Tokenize(word, ids);
        foreach (var (start, end, id) in _added.SplitRaw(text))
        {
            if (id >= 0) { ids.Add(id); continue; }
            var piece = start == 0 && end == text.Length ? text : text[start..end];
            var normalized = _normalizer?.Normalize(piece) ?? piece;
            foreach (var (from, to, addedId) in _added.SplitNormalized(normalized))
            {
                if (addedId >= 0) { ids.Add(addedId); continue; }
                var part = from == 0 && to == normalized.Length ? normalized : normalized[from..to];
                bool atStart = start == 0 && from == 0;
                if (_preTokenizer is null) toModel(part, atStart);
                else _preTokenizer.PreTokenize(part, atStart, toModel);
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
