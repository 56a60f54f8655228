using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Axolotl.Tokenization;

/// <summary>tokenizers' <c>decode_chain</c>: each decoder maps the token strings to new strings; the result is concatenated.</summary>
interface IDecoder { List<string> DecodeChain(List<string> tokens); }

sealed class ByteLevelDecoder : IDecoder
{
    public List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var token in tokens)
        {
            // A token with any character outside the byte alphabet (an added token, say) contributes its own UTF-8.
            int mark = bytes.Count;
            bool mapped = true;
            foreach (var ch in token)
            {
                if (!ByteLevelPreTokenizer.CharToByte.TryGetValue(ch, out var b)) { mapped = false; break; }
                bytes.Add(b);
            }
            if (!mapped)
            {
                bytes.RemoveRange(mark, bytes.Count - mark);
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
            }
        }
        return [Encoding.UTF8.GetString(bytes.ToArray())]; // invalid sequences become U+FFFD like from_utf8_lossy
    }
}

sealed class ReplaceDecoder(string pattern, string content) : IDecoder
{
    public List<string> DecodeChain(List<string> tokens) =>
        pattern.Length == 0 ? tokens : tokens.Select(t => t.Replace(pattern, content, StringComparison.Ordinal)).ToList();
}

sealed class ByteFallbackDecoder : IDecoder
{
    public List<string> DecodeChain(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        foreach (var token in tokens)
        {
            if (token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
                && byte.TryParse(token.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var b))
            {
                pending.Add(b);
                continue;
            }
            Flush(pending, result);
            result.Add(token);
        }
        Flush(pending, result);
        return result;
    }

    // A run of byte tokens that is not valid UTF-8 as a whole becomes one U+FFFD per byte, as in tokenizers.
    static void Flush(List<byte> pending, List<string> result)
    {
        if (pending.Count == 0) return;
        var bytes = pending.ToArray();
        if (Utf8.IsValid(bytes)) result.Add(Encoding.UTF8.GetString(bytes));
        else result.AddRange(Enumerable.Repeat("\uFFFD", bytes.Length));
        pending.Clear();
    }
}

sealed class FuseDecoder : IDecoder
{
    public List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

sealed class StripDecoder(string content, int start, int stop) : IDecoder
{
    public List<string> DecodeChain(List<string> tokens) => tokens.Select(Strip).ToList();

    string Strip(string token)
    {
        var runes = token.EnumerateRunes().ToList();
        var c = Rune.GetRuneAt(content, 0);
        int from = 0, to = runes.Count;
        while (from < Math.Min(start, runes.Count) && runes[from] == c) from++;
        for (int i = 0; i < stop && to > from && runes[to - 1] == c; i++) to--;
        return string.Concat(runes.Skip(from).Take(to - from).Select(r => r.ToString()));
    }
}

/// <summary>tokenizers' Metaspace decoder: the replacement becomes a space; in the first token (unless prepend_scheme
/// is never) every replacement is dropped, not only a leading one, as tokenizers does.</summary>
sealed class MetaspaceDecoder(char replacement, PrependScheme scheme) : IDecoder
{
    public List<string> DecodeChain(List<string> tokens) => tokens.Select((token, i) =>
        i == 0 && scheme != PrependScheme.Never ? token.Replace(replacement.ToString(), "") : token.Replace(replacement, ' ')).ToList();
}

sealed class SequenceDecoder(IDecoder[] steps) : IDecoder
{
    public List<string> DecodeChain(List<string> tokens)
    {
        foreach (var step in steps) tokens = step.DecodeChain(tokens);
        return tokens;
    }
}

static class Decoders
{
    public static IDecoder? Parse(JsonElement json, string file)
    {
        if (json.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        var type = JsonRead.Type(json, file, "decoder");
        return type switch
        {
            "ByteLevel" => new ByteLevelDecoder(),
            "Replace" => new ReplaceDecoder(JsonRead.StringPattern(json, file, "Replace decoder"), JsonRead.String(json, "content", file)),
            "ByteFallback" => new ByteFallbackDecoder(),
            "Fuse" => new FuseDecoder(),
            "Metaspace" => new MetaspaceDecoder(PreTokenizers.Replacement(json, file), PreTokenizers.ParsePrependScheme(json, file)),
            "Strip" => new StripDecoder(JsonRead.String(json, "content", file) is { Length: > 0 } c ? c : throw JsonRead.Invalid(file, "Strip decoder with empty content"),
                JsonRead.Int(json, "start", file), JsonRead.Int(json, "stop", file)),
            "Sequence" => new SequenceDecoder(JsonRead.Array(json, "decoders", file)
                .Select(e => Parse(e, file) ?? throw JsonRead.Invalid(file, "a null entry in a decoder Sequence")).ToArray()),
            _ => throw JsonRead.Unsupported(file, "decoder", type),
        };
    }
}
