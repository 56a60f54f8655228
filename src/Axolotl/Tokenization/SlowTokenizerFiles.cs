using System.Text;
using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>
/// A <c>tokenizer.model</c> without a tokenizer.json, turned into the fast pipeline that transformers'
/// convert_slow_tokenizer builds from it (AutoTokenizer with use_fast does the same, and then never runs
/// SentencePiece or tiktoken itself): SentencePiece BPE as LlamaConverter does, tiktoken ranks as TikTokenConverter does.
/// Encoding then goes through this library's BPE, so a converted tokenizer and the tokenizer.json that transformers
/// would save for it give the same ids.
/// </summary>
static class SlowTokenizerFiles
{
    /// <summary>TikTokenConverter's default pattern (Llama-3's).</summary>
    public const string Llama3Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static Pipeline Convert(string path, JsonElement config)
    {
        var bytes = File.ReadAllBytes(path);
        return LooksLikeTiktoken(bytes) ? FromTiktoken(bytes, path) : FromSentencePiece(bytes, path, config);
    }

    // A tiktoken file is text lines "<base64> <rank>"; a SentencePiece model is a protobuf starting with field 1 (0x0A).
    static bool LooksLikeTiktoken(byte[] bytes)
    {
        int end = Array.IndexOf(bytes, (byte)'\n');
        if (end <= 0) return false;
        var line = Encoding.ASCII.GetString(bytes, 0, end).TrimEnd('\r').Split(' ');
        return line.Length == 2 && int.TryParse(line[1], out _) && line[0].All(c => char.IsAsciiLetterOrDigit(c) || c is '+' or '/' or '=');
    }

    public static Pipeline FromTiktoken(byte[] bytes, string path)
    {
        var ranks = new Dictionary<string, int>(); // keyed by the byte-level string of the token
        var byRank = new List<(string Token, byte[] Bytes, int Rank)>();
        var text = Encoding.ASCII.GetString(bytes);
        int lineNumber = 0;
        foreach (var raw in text.Split('\n'))
        {
            lineNumber++;
            var line = raw.TrimEnd('\r');
            if (line.Length == 0) continue;
            var parts = line.Split(' ');
            byte[] token;
            try { token = System.Convert.FromBase64String(parts[0]); }
            catch (FormatException) { throw new UserError($"{path}:{lineNumber}: not a tiktoken line \"<base64> <rank>\"."); }
            if (parts.Length != 2 || !int.TryParse(parts[1], out var rank))
                throw new UserError($"{path}:{lineNumber}: not a tiktoken line \"<base64> <rank>\".");
            var name = ByteLevel(token);
            ranks[name] = rank;
            byRank.Add((name, token, rank));
        }

        // Every split of a token into two known tokens is a merge ranked by the token's rank, ties by the parts' ranks.
        var merges = new List<(string A, string B, int Rank, int RankA, int RankB)>();
        foreach (var (token, raw, rank) in byRank)
        {
            for (int i = 1; i < raw.Length; i++)
            {
                if (ranks.TryGetValue(ByteLevel(raw.AsSpan(0, i)), out var left) && ranks.TryGetValue(ByteLevel(raw.AsSpan(i)), out var right))
                    merges.Add((ByteLevel(raw.AsSpan(0, i)), ByteLevel(raw.AsSpan(i)), rank, left, right));
            }
        }
        var ordered = merges.OrderBy(m => m.Rank).ThenBy(m => m.RankA).ThenBy(m => m.RankB).Select(m => (m.A, m.B)).ToList();
        var model = new BpeModel(ranks, ordered, null, null, null, byteFallback: false, fuseUnk: false, ignoreMerges: true, path);
        var preTokenizer = new SequencePreTokenizer([
            new SplitPreTokenizer(new RegexPattern(Llama3Pattern, path), SplitBehavior.Isolated, invert: false),
            new ByteLevelPreTokenizer(addPrefixSpace: false, useRegex: false)]);
        return new Pipeline(null, preTokenizer, model, [], new ByteLevelDecoder(), []);
    }

    static string ByteLevel(ReadOnlySpan<byte> bytes)
    {
        Span<char> chars = bytes.Length <= 256 ? stackalloc char[bytes.Length] : new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteLevelPreTokenizer.ByteToChar[bytes[i]];
        return new string(chars);
    }

    const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4;

    public static Pipeline FromSentencePiece(byte[] bytes, string path, JsonElement config)
    {
        var proto = SentencePieceModel.Parse(bytes, path);
        if (proto.ModelType != 2)
            throw new UserError($"{path}: SentencePiece model type {proto.ModelType} is not supported (only BPE, type 2; Unigram models need a tokenizer.json).");
        var pieces = proto.Pieces;
        var vocab = new Dictionary<string, int>(pieces.Count);
        for (int i = 0; i < pieces.Count; i++) vocab.TryAdd(pieces[i].Piece, i);

        // LlamaConverter scores the first three pieces 0; merges are ordered by score, highest first (a stable sort:
        // equal scores keep piece order), and within one piece by the ids of its two halves. Halves are cut by code point.
        var merges = new List<(string A, string B, float Score, int Order, int IdA, int IdB)>();
        for (int i = 0; i < pieces.Count; i++)
        {
            var piece = pieces[i].Piece;
            float score = i < 3 ? 0f : pieces[i].Score;
            for (int cut = 1; cut < piece.Length; cut++)
            {
                if (char.IsLowSurrogate(piece[cut])) continue;
                if (vocab.TryGetValue(piece[..cut], out var a) && vocab.TryGetValue(piece[cut..], out var b))
                    merges.Add((piece[..cut], piece[cut..], score, i, a, b));
            }
        }
        var ordered = merges.OrderByDescending(m => m.Score).ThenBy(m => m.Order).ThenBy(m => m.IdA).ThenBy(m => m.IdB)
            .Select(m => (m.A, m.B)).ToList();
        var unk = proto.UnkId >= 0 && proto.UnkId < pieces.Count ? pieces[proto.UnkId].Piece : "<unk>";
        var model = new BpeModel(vocab, ordered, unk, null, null, byteFallback: true, fuseUnk: true, ignoreMerges: false, path);

        var added = new List<AddedToken>();
        for (int i = 0; i < Math.Min(3, pieces.Count); i++) added.Add(new AddedToken(pieces[i].Piece, Normalized: false, Special: true));
        for (int i = 3; i < pieces.Count; i++)
            if (pieces[i].Type is Control or UserDefined)
                added.Add(new AddedToken(pieces[i].Piece, Normalized: false, Special: pieces[i].Type == Control));

        // transformers' LlamaTokenizer defaults to legacy=true: Prepend + Replace normalizer; legacy=false moves the
        // space handling into a Metaspace pre-tokenizer that prepends only at the start of the input.
        bool legacy = JsonRead.Get(config, "legacy") is not { ValueKind: JsonValueKind.False };
        bool addPrefixSpace = JsonRead.Bool(config, "add_prefix_space", true);
        INormalizer? normalizer = null;
        IPreTokenizer? preTokenizer = null;
        if (legacy)
            normalizer = new SequenceNormalizer(addPrefixSpace
                ? [new PrependNormalizer("\u2581"), new ReplaceNormalizer(" ", "\u2581")]
                : [new ReplaceNormalizer(" ", "\u2581")]);
        else
            preTokenizer = new MetaspacePreTokenizer('\u2581', addPrefixSpace ? PrependScheme.First : PrependScheme.Never, split: false);
        IDecoder[] decoders = [new ReplaceDecoder("\u2581", " "), new ByteFallbackDecoder(), new FuseDecoder()];
        if (addPrefixSpace) decoders = [.. decoders, new StripDecoder(" ", 1, 0)];
        var post = proto.BosId >= 0 && proto.BosId < pieces.Count ? new List<SpecialTokenTemplate> { new([[proto.BosId], null]) } : [];
        return new Pipeline(normalizer, preTokenizer, model, post, new SequenceDecoder(decoders), added);
    }
}

/// <summary>The fields of SentencePiece's ModelProto that the conversion needs, read from the protobuf wire format.</summary>
sealed class SentencePieceModel
{
    public readonly List<(string Piece, float Score, int Type)> Pieces = [];
    public int ModelType = 1, UnkId = 0, BosId = 1, EosId = 2;

    public static SentencePieceModel Parse(byte[] data, string path)
    {
        var model = new SentencePieceModel();
        try
        {
            var reader = new Reader(data, 0, data.Length);
            while (reader.More)
            {
                var (field, wire) = reader.Tag();
                if (field == 1 && wire == 2) model.Pieces.Add(ParsePiece(reader.Sub()));
                else if (field == 2 && wire == 2) ParseTrainerSpec(reader.Sub(), model);
                else reader.Skip(wire);
            }
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentException or FormatException or OverflowException)
        {
            throw new UserError($"{path} is neither a SentencePiece model nor a tiktoken file ({e.Message}).", e);
        }
        if (model.Pieces.Count == 0) throw new UserError($"{path} is neither a SentencePiece model nor a tiktoken file (it holds no pieces).");
        return model;
    }

    static (string, float, int) ParsePiece(Reader r)
    {
        string piece = "";
        float score = 0;
        int type = 1;
        while (r.More)
        {
            var (field, wire) = r.Tag();
            if (field == 1 && wire == 2) piece = r.String();
            else if (field == 2 && wire == 5) score = r.Float();
            else if (field == 3 && wire == 0) type = (int)r.Varint();
            else r.Skip(wire);
        }
        return (piece, score, type);
    }

    static void ParseTrainerSpec(Reader r, SentencePieceModel model)
    {
        while (r.More)
        {
            var (field, wire) = r.Tag();
            if (wire != 0) { r.Skip(wire); continue; }
            long value = r.Varint();
            switch (field)
            {
                case 3: model.ModelType = (int)value; break;
                case 40: model.UnkId = (int)value; break;
                case 41: model.BosId = (int)value; break;
                case 42: model.EosId = (int)value; break;
            }
        }
    }

    sealed class Reader(byte[] data, int start, int end)
    {
        int _pos = start;
        public bool More => _pos < end;

        public long Varint()
        {
            long result = 0;
            for (int shift = 0; ; shift += 7)
            {
                if (_pos >= end || shift > 63) throw new FormatException("a truncated varint");
                byte b = data[_pos++];
                result |= (long)(b & 0x7F) << shift;
                if (b < 0x80) return result;
            }
        }

        public (int Field, int Wire) Tag() { long tag = Varint(); return ((int)(tag >> 3), (int)(tag & 7)); }

        public Reader Sub()
        {
            int length = checked((int)Varint());
            if (length < 0 || _pos + length > end) throw new FormatException("a field runs past the end");
            var sub = new Reader(data, _pos, _pos + length);
            _pos += length;
            return sub;
        }

        public string String() { var sub = Sub(); return Encoding.UTF8.GetString(data, sub._pos, sub.Length); }
        int Length => end - _pos;

        public float Float()
        {
            if (_pos + 4 > end) throw new FormatException("a truncated float");
            var value = BitConverter.ToSingle(data, _pos);
            _pos += 4;
            return value;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: _pos += 8; break;
                case 2: Sub(); break;
                case 5: _pos += 4; break;
                default: throw new FormatException($"wire type {wire}");
            }
            if (_pos > end) throw new FormatException("a field runs past the end");
        }
    }
}
