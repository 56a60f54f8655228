using System.Text;
using System.Text.Json;

namespace Axolotl.Tokenization;

delegate void WordSink(ReadOnlySpan<char> word);

interface IPreTokenizer { void PreTokenize(string text, WordSink sink); }

/// <summary>
/// tokenizers' ByteLevel pre-tokenizer: optional prefix space, the GPT-2 split, then every UTF-8 byte mapped to
/// a printable character (the GPT-2 bytes_to_unicode table).
/// </summary>
sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : IPreTokenizer
{
    public static readonly char[] ByteToChar = BuildByteToChar();
    public static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    static char[] BuildByteToChar()
    {
        var map = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = (char)(printable ? b : next++);
        }
        return map;
    }

    public void PreTokenize(string text, WordSink sink)
    {
        if (addPrefixSpace && !text.StartsWith(' ')) text = " " + text;
        if (!useRegex) { EmitBytes(text, sink); return; }
        for (int start = 0; start < text.Length;)
        {
            int end = Gpt2PieceEnd(text, start);
            EmitBytes(text.AsSpan(start, end - start), sink);
            start = end;
        }
    }

    static void EmitBytes(ReadOnlySpan<char> piece, WordSink sink)
    {
        int max = Encoding.UTF8.GetMaxByteCount(piece.Length);
        Span<byte> bytes = max <= 512 ? stackalloc byte[max] : new byte[max];
        int count = Encoding.UTF8.GetBytes(piece, bytes);
        Span<char> chars = count <= 512 ? stackalloc char[count] : new char[count];
        for (int i = 0; i < count; i++) chars[i] = ByteToChar[bytes[i]];
        sink(chars);
    }

    enum Cat { Space, Letter, Number, Other }

    static Cat Classify(int cp) =>
        UnicodeClass.IsWhiteSpace(cp) ? Cat.Space : UnicodeClass.IsLetter(cp) ? Cat.Letter : UnicodeClass.IsNumber(cp) ? Cat.Number : Cat.Other;

    /// <summary>
    /// End of the match that Oniguruma finds at <paramref name="i"/> for GPT-2's
    /// <c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c>.
    /// Hand-written because .NET's regex classifies UTF-16 units (so astral letters would split) and has another \s.
    /// </summary>
    static int Gpt2PieceEnd(string s, int i)
    {
        int n = s.Length;
        if (s[i] == '\'' && i + 1 < n)
        {
            char a = s[i + 1];
            if (a is 's' or 't' or 'm' or 'd') return i + 2;
            if (i + 2 < n && (a, s[i + 2]) is ('r', 'e') or ('v', 'e') or ('l', 'l')) return i + 3;
        }

        // " ?X+" for X in letters, numbers, other: the optional space only counts when X follows it.
        int p = s[i] == ' ' && i + 1 < n ? i + 1 : i;
        var cat = Classify(UnicodeClass.CodePointAt(s, p, out int len));
        if (cat == Cat.Space && p != i) { p = i; cat = Cat.Space; }
        if (cat != Cat.Space)
        {
            int end = p + len;
            while (end < n)
            {
                int cp = UnicodeClass.CodePointAt(s, end, out int l);
                if (Classify(cp) != cat) break;
                end += l;
            }
            return end;
        }

        // "\s+(?!\S)" backs off one character when non-space follows, unless that leaves nothing; then "\s+".
        int wsEnd = i;
        while (wsEnd < n && UnicodeClass.IsWhiteSpace(s[wsEnd])) wsEnd++; // White_Space is BMP-only
        if (wsEnd == n || wsEnd - i == 1) return wsEnd;
        return wsEnd - 1;
    }
}

static class PreTokenizers
{
    public static IPreTokenizer? Parse(JsonElement json, string file)
    {
        if (json.ValueKind == JsonValueKind.Null) return null;
        var type = JsonRead.Type(json, file, "pre_tokenizer");
        return type switch
        {
            "ByteLevel" => new ByteLevelPreTokenizer(JsonRead.Bool(json, "add_prefix_space", true), JsonRead.Bool(json, "use_regex", true)),
            _ => throw JsonRead.Unsupported(file, "pre_tokenizer", type),
        };
    }
}
