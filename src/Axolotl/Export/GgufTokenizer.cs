using System.Text.Json.Nodes;
using Axolotl.Tokenization;

namespace Axolotl.Export;

/// <summary>
/// The tokenizer as GGUF metadata (<c>tokenizer.ggml.*</c>), as llama.cpp's converter writes it from the same files:
/// a SentencePiece vocabulary (tokenizer.model, or a tokenizer.json BPE with byte fallback or Unigram) as model
/// "llama" with tokens, scores and token types; a byte-level BPE as model "gpt2" with tokens, merges, token types and
/// the pre-tokenizer's name; then the special token ids, add_bos/add_eos and the chat template.
/// </summary>
internal static class GgufTokenizer
{
    // llama.cpp's token types (llama_token_type).
    const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    /// <summary>Pre-tokenizer split patterns of byte-level BPE tokenizers → llama.cpp's tokenizer.ggml.pre name.</summary>
    static readonly (string Pattern, string Name)[] PreTokenizers =
    [
        ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2"),
        ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "llama-bpe"),
    ];

    /// <param name="folder">Tokenizer files as saved with the model (config-added tokens already written into them).</param>
    /// <param name="tokenizer">The same tokenizer loaded, for special token ids and what encoding adds.</param>
    /// <param name="modelVocab">Rows of the embedding matrix; the token list is padded to it as llama.cpp needs.</param>
    /// <returns>Warnings for the caller to show.</returns>
    public static List<string> AddMetadata(GgufWriter writer, string folder, Tokenizer tokenizer, int modelVocab)
    {
        var warnings = new List<string>();
        if (tokenizer.VocabSize > modelVocab)
            throw new UserError($"GGUF export: the tokenizer has {tokenizer.VocabSize} tokens but the model's embeddings only {modelVocab} rows.");
        var tokens = new List<string>();
        var types = new List<int>();
        var scores = new List<float>();
        List<string>? merges = null;
        string model;
        var jsonPath = Path.Combine(folder, "tokenizer.json");
        var spmPath = Path.Combine(folder, "tokenizer.model");
        JsonObject? json = File.Exists(jsonPath) ? IO.JsonFiles.ReadObject(jsonPath) : null;
        var specialAdded = new HashSet<int>();
        var plainAdded = new HashSet<int>();
        foreach (var added in json?["added_tokens"]?.AsArray() ?? [])
            (added?["special"]?.GetValue<bool>() == true ? specialAdded : plainAdded).Add(added!["id"]!.GetValue<int>());
        var modelType = json?["model"]?["type"]?.GetValue<string>();
        bool byteFallback = json?["model"]?["byte_fallback"]?.GetValue<bool>() == true;

        if (File.Exists(spmPath) && TrySentencePiece(spmPath) is { } spm)
        {
            model = "llama";
            foreach (var (piece, score, type) in spm.Pieces)
            {
                tokens.Add(piece);
                scores.Add(score);
                // sentencepiece's piece types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte — llama.cpp's numbering.
                types.Add(type);
            }
        }
        else if (json is not null && (modelType == "Unigram" || modelType == "BPE" && byteFallback))
        {
            model = "llama";
            var ranks = modelType == "BPE" ? MergeRanks(json) : null;
            foreach (var (text, score) in SpmVocab(json, modelType!, ranks))
            {
                tokens.Add(text);
                scores.Add(score);
                types.Add(text.Length == 6 && text.StartsWith("<0x") && text.EndsWith('>') ? Byte : Normal);
            }
        }
        else if (json is not null && modelType == "BPE")
        {
            model = "gpt2";
            var vocab = json["model"]!["vocab"]!.AsObject();
            var byId = new string?[vocab.Count];
            foreach (var (text, id) in vocab) byId[id!.GetValue<int>()] = text;
            tokens.AddRange(byId.Select((t, i) => t ?? $"[PAD{i}]"));
            types.AddRange(byId.Select(t => t is null ? Unused : Normal));
            merges = json["model"]!["merges"]!.AsArray().Select(m => m is JsonArray pair ? $"{pair[0]} {pair[1]}" : m!.GetValue<string>()).ToList();
            var pattern = FindSplitPattern(json["pre_tokenizer"]);
            string pre = pattern is null ? "gpt-2" : PreTokenizers.FirstOrDefault(p => p.Pattern == pattern).Name ?? "default";
            if (pre == "default") warnings.Add("GGUF export: the tokenizer's pre-tokenizer pattern is not one llama.cpp names here; tokenizer.ggml.pre is 'default', so llama.cpp may split text differently (token ids given directly are unaffected).");
            writer.Add("tokenizer.ggml.pre", GgufValue.Of(pre));
        }
        else throw new UserError($"GGUF export: the tokenizer in '{folder}' ({modelType ?? "no tokenizer.json or tokenizer.model"}) cannot be written as a llama.cpp vocabulary (SentencePiece and byte-level BPE can).");

        // Tokens past the base vocabulary: added ones (by the files or the config's special_tokens and tokens).
        for (int id = tokens.Count; id < tokenizer.VocabSize; id++)
        {
            tokens.Add(tokenizer.IdToToken(id) ?? $"[PAD{id}]");
            scores.Add(0);
            types.Add(Normal);
        }
        for (int id = 0; id < tokens.Count; id++)
            if (specialAdded.Contains(id)) types[id] = Control;
            else if (id >= tokenizer.VocabSize) types[id] = Unused;
            else if (plainAdded.Contains(id)) types[id] = UserDefined;
        if (tokenizer.UnkTokenId is int unk && model == "llama") types[unk] = Unknown;
        // llama.cpp reads one row of token_embd per token: pad as its converter does.
        for (int id = tokens.Count; id < modelVocab; id++)
        {
            tokens.Add($"[PAD{id}]");
            scores.Add(0);
            types.Add(Unused);
        }

        writer.Add("tokenizer.ggml.model", GgufValue.Of(model));
        writer.Add("tokenizer.ggml.tokens", GgufValue.Strings(tokens));
        if (model == "llama") writer.Add("tokenizer.ggml.scores", GgufValue.Floats(scores));
        writer.Add("tokenizer.ggml.token_type", GgufValue.Ints(types));
        if (merges is not null) writer.Add("tokenizer.ggml.merges", GgufValue.Strings(merges));
        void Id(string key, int? id) { if (id is int v) writer.Add($"tokenizer.ggml.{key}", GgufValue.Of((uint)v)); }
        Id("bos_token_id", tokenizer.BosTokenId);
        Id("eos_token_id", tokenizer.EosTokenId);
        Id("unknown_token_id", tokenizer.UnkTokenId);
        Id("padding_token_id", tokenizer.PadTokenId);
        // What encoding adds, observed rather than read from flags, so class defaults and templates count too.
        var plain = tokenizer.Encode("a", false);
        var full = tokenizer.Encode("a", true);
        bool addBos = tokenizer.BosTokenId is int bos && full.Count > plain.Count && full[0] == bos;
        bool addEos = tokenizer.EosTokenId is int eos && full.Count > plain.Count && full[^1] == eos;
        writer.Add("tokenizer.ggml.add_bos_token", GgufValue.Of(addBos));
        writer.Add("tokenizer.ggml.add_eos_token", GgufValue.Of(addEos));
        if (ChatTemplate(folder) is { } template) writer.Add("tokenizer.chat_template", GgufValue.Of(template));
        return warnings;
    }

    static SentencePieceModel? TrySentencePiece(string path)
    {
        try { return SentencePieceModel.Parse(File.ReadAllBytes(path), path); }
        catch (UserError) { return null; } // a tiktoken file: tokenizer.json has the same vocabulary
    }

    /// <summary>
    /// Each token's score for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose joined text has
    /// the highest score: for a BPE vocabulary, minus the rank of the first merge producing the token (so merges apply
    /// in HF's order); for Unigram, the vocabulary's own log-probabilities.
    /// </summary>
    static IEnumerable<(string Text, float Score)> SpmVocab(JsonObject json, string modelType, Dictionary<string, int>? ranks)
    {
        if (modelType == "Unigram")
        {
            foreach (var entry in json["model"]!["vocab"]!.AsArray())
                yield return (entry![0]!.GetValue<string>(), (float)entry[1]!.GetValue<double>());
            yield break;
        }
        var vocab = json["model"]!["vocab"]!.AsObject();
        var byId = new string?[vocab.Count];
        foreach (var (text, id) in vocab) byId[id!.GetValue<int>()] = text;
        for (int i = 0; i < byId.Length; i++)
        {
            var text = byId[i] ?? $"[PAD{i}]";
            yield return (text, ranks!.TryGetValue(text, out var rank) ? -rank : 0f);
        }
    }

    static Dictionary<string, int> MergeRanks(JsonObject json)
    {
        var ranks = new Dictionary<string, int>();
        int rank = 0;
        foreach (var m in json["model"]!["merges"]!.AsArray())
        {
            string merged = m is JsonArray pair ? pair[0]!.GetValue<string>() + pair[1]!.GetValue<string>() : m!.GetValue<string>().Replace(" ", "");
            ranks.TryAdd(merged, rank++);
        }
        return ranks;
    }

    /// <summary>The regex of a Split pre-tokenizer (alone or in a Sequence); null for plain ByteLevel (GPT-2's own pattern).</summary>
    static string? FindSplitPattern(JsonNode? pre)
    {
        if (pre is null) return null;
        if (pre["type"]?.GetValue<string>() == "Split") return pre["pattern"]?["Regex"]?.GetValue<string>();
        foreach (var inner in pre["pretokenizers"]?.AsArray() ?? [])
            if (FindSplitPattern(inner) is { } p) return p;
        return null;
    }

    static string? ChatTemplate(string folder)
    {
        var path = Path.Combine(folder, "tokenizer_config.json");
        if (!File.Exists(path)) return null;
        return IO.JsonFiles.ReadObject(path)["chat_template"] switch
        {
            JsonValue v => v.GetValue<string>(),
            JsonArray list => list.FirstOrDefault(t => t?["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
            _ => null,
        };
    }
}
