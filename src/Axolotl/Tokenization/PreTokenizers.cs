using System.Text;
using System.Text.Json;

namespace Axolotl.Tokenization;

/// <summary>Receives one pre-token; <paramref name="atStart"/> is true when it begins at offset 0 of the original input.</summary>
delegate void PieceSink(ReadOnlySpan<char> piece, bool atStart);

interface IPreTokenizer { void PreTokenize(ReadOnlySpan<char> text, bool atStart, PieceSink sink); }

/// <summary>tokenizers' <c>SplitDelimiterBehavior</c>.</summary>
enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

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

    public void PreTokenize(ReadOnlySpan<char> text, bool atStart, PieceSink sink)
    {
        // tokenizers adds the prefix space to every split that lacks one, not only to the first.
        if (addPrefixSpace && (text.IsEmpty || text[0] != ' ')) text = string.Concat(" ", text);
        if (!useRegex) { EmitBytes(text, atStart, sink); return; }
        for (int start = 0; start < text.Length;)
        {
            int end = Gpt2PieceEnd(text, start);
            EmitBytes(text.Slice(start, end - start), atStart && start == 0, sink);
            start = end;
        }
    }

    static void EmitBytes(ReadOnlySpan<char> piece, bool atStart, PieceSink sink)
    {
        int max = Encoding.UTF8.GetMaxByteCount(piece.Length);
        Span<byte> bytes = max <= 512 ? stackalloc byte[max] : new byte[max];
        int count = Encoding.UTF8.GetBytes(piece, bytes);
        Span<char> chars = count <= 512 ? stackalloc char[count] : new char[count];
        for (int i = 0; i < count; i++) chars[i] = ByteToChar[bytes[i]];
        sink(chars, atStart);
    }

    enum Cat { Space, Letter, Number, Other }

    static Cat Classify(int cp) =>
        UnicodeClass.IsWhiteSpace(cp) ? Cat.Space : UnicodeClass.IsLetter(cp) ? Cat.Letter : UnicodeClass.IsNumber(cp) ? Cat.Number : Cat.Other;

    /// <summary>
    /// End of the match that Oniguruma finds at <paramref name="i"/> for GPT-2's
    /// <c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c>.
    /// Hand-written because it is the hot path of every byte-level tokenizer; <see cref="RegexPattern"/> is the general case.
    /// </summary>
    static int Gpt2PieceEnd(ReadOnlySpan<char> s, int i)
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

/// <summary>
/// tokenizers' Metaspace: spaces become the replacement character, a replacement is prepended (always, only to the
/// piece at the start of the input, or never), and with <c>split</c> the piece is cut before each replacement.
/// </summary>
sealed class MetaspacePreTokenizer(char replacement, PrependScheme scheme, bool split) : IPreTokenizer
{
    public void PreTokenize(ReadOnlySpan<char> text, bool atStart, PieceSink sink)
    {
        var s = text.ToString().Replace(' ', replacement);
        bool prepend = scheme == PrependScheme.Always || (scheme == PrependScheme.First && atStart);
        if (prepend && !s.StartsWith(replacement)) s = replacement + s;
        if (!split) { sink(s, atStart); return; }
        var spans = Splitting.ByChar(s, c => c == replacement, SplitBehavior.MergedWithNext);
        foreach (var (start, end) in spans) sink(s.AsSpan(start, end - start), atStart && start == 0);
    }
}

enum PrependScheme { First, Always, Never }

/// <summary>tokenizers' Split: a string or regex pattern, a delimiter behaviour, optionally inverted.</summary>
sealed class SplitPreTokenizer(RegexPattern pattern, SplitBehavior behavior, bool invert) : IPreTokenizer
{
    public void PreTokenize(ReadOnlySpan<char> text, bool atStart, PieceSink sink)
    {
        // The common case (Llama-3, Qwen2: Isolated, not inverted) streams the pieces without building lists.
        if (behavior == SplitBehavior.Isolated && !invert) { pattern.ForEachSpan(text, atStart, sink); return; }
        var matches = pattern.FindMatches(text);
        if (invert) for (int i = 0; i < matches.Count; i++) matches[i] = matches[i] with { IsMatch = !matches[i].IsMatch };
        foreach (var (start, end) in Splitting.Apply(matches, behavior))
            sink(text.Slice(start, end - start), atStart && start == 0);
    }
}

/// <summary>A pre-tokenizer that splits on single characters (Digits, Punctuation, WhitespaceSplit).</summary>
sealed class CharSplitPreTokenizer(Func<int, bool> isDelimiter, SplitBehavior behavior) : IPreTokenizer
{
    public void PreTokenize(ReadOnlySpan<char> text, bool atStart, PieceSink sink)
    {
        foreach (var (start, end) in Splitting.ByChar(text, isDelimiter, behavior))
            sink(text.Slice(start, end - start), atStart && start == 0);
    }
}

sealed class SequencePreTokenizer(IPreTokenizer[] steps) : IPreTokenizer
{
    public void PreTokenize(ReadOnlySpan<char> text, bool atStart, PieceSink sink) => Run(0, text, atStart, sink);

    void Run(int step, ReadOnlySpan<char> text, bool atStart, PieceSink sink)
    {
        if (step == steps.Length) { sink(text, atStart); return; }
        steps[step].PreTokenize(text, atStart, (piece, start) => Run(step + 1, piece, start, sink));
    }
}

/// <summary>How tokenizers turns pattern matches into splits (<c>NormalizedString::split</c>).</summary>
static class Splitting
{
    public static List<(int Start, int End)> ByChar(ReadOnlySpan<char> text, Func<int, bool> isDelimiter, SplitBehavior behavior)
    {
        // Each matching character is a match of its own; the characters between matches form one non-match.
        var matches = new List<(int Start, int End, bool IsMatch)>();
        int plain = 0;
        for (int i = 0; i < text.Length;)
        {
            int cp = UnicodeClass.CodePointAt(text, i, out int len);
            if (isDelimiter(cp))
            {
                if (plain < i) matches.Add((plain, i, false));
                matches.Add((i, i + len, true));
                plain = i + len;
            }
            i += len;
        }
        if (plain < text.Length) matches.Add((plain, text.Length, false));
        return Apply(matches, behavior);
    }

    public static List<(int Start, int End)> Apply(List<(int Start, int End, bool IsMatch)> matches, SplitBehavior behavior)
    {
        var result = new List<(int Start, int End)>(matches.Count);
        switch (behavior)
        {
            case SplitBehavior.Isolated:
                foreach (var m in matches) result.Add((m.Start, m.End));
                break;
            case SplitBehavior.Removed:
                foreach (var m in matches) if (!m.IsMatch) result.Add((m.Start, m.End));
                break;
            case SplitBehavior.MergedWithPrevious:
            {
                bool previousMatch = false;
                foreach (var m in matches)
                {
                    if (m.IsMatch && !previousMatch && result.Count > 0) result[^1] = (result[^1].Start, m.End);
                    else result.Add((m.Start, m.End));
                    previousMatch = m.IsMatch;
                }
                break;
            }
            case SplitBehavior.MergedWithNext:
            {
                bool nextMatch = false;
                for (int i = matches.Count - 1; i >= 0; i--)
                {
                    var m = matches[i];
                    if (m.IsMatch && !nextMatch && result.Count > 0) result[^1] = (m.Start, result[^1].End);
                    else result.Add((m.Start, m.End));
                    nextMatch = m.IsMatch;
                }
                result.Reverse();
                break;
            }
            case SplitBehavior.Contiguous:
            {
                bool previousMatch = false;
                foreach (var m in matches)
                {
                    if (m.IsMatch == previousMatch && result.Count > 0) result[^1] = (result[^1].Start, m.End);
                    else result.Add((m.Start, m.End));
                    previousMatch = m.IsMatch;
                }
                break;
            }
        }
        result.RemoveAll(r => r.End <= r.Start);
        return result;
    }

    public static SplitBehavior ParseBehavior(JsonElement json, string file, SplitBehavior fallback) =>
        JsonRead.OptionalString(json, "behavior", file) switch
        {
            null => fallback,
            "Removed" => SplitBehavior.Removed,
            "Isolated" => SplitBehavior.Isolated,
            "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
            "MergedWithNext" => SplitBehavior.MergedWithNext,
            "Contiguous" => SplitBehavior.Contiguous,
            var other => throw JsonRead.Invalid(file, $"split behavior \"{other}\""),
        };
}

static class PreTokenizers
{
    public static IPreTokenizer? Parse(JsonElement json, string file)
    {
        if (json.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        var type = JsonRead.Type(json, file, "pre_tokenizer");
        return type switch
        {
            "ByteLevel" => new ByteLevelPreTokenizer(JsonRead.Bool(json, "add_prefix_space", true), JsonRead.Bool(json, "use_regex", true)),
            "Sequence" => new SequencePreTokenizer(JsonRead.Array(json, "pretokenizers", file)
                .Select(e => Parse(e, file) ?? throw JsonRead.Invalid(file, "a null entry in a pre_tokenizer Sequence")).ToArray()),
            "Split" => new SplitPreTokenizer(RegexPattern.FromJson(json, file, "Split pre_tokenizer"),
                Splitting.ParseBehavior(json, file, SplitBehavior.Isolated), JsonRead.Bool(json, "invert", false)),
            "Metaspace" => new MetaspacePreTokenizer(Replacement(json, file), ParsePrependScheme(json, file), JsonRead.Bool(json, "split", true)),
            "Digits" => new CharSplitPreTokenizer(UnicodeClass.IsNumber,
                JsonRead.Bool(json, "individual_digits", false) ? SplitBehavior.Isolated : SplitBehavior.Contiguous),
            "Punctuation" => new CharSplitPreTokenizer(UnicodeClass.IsPunctuation, Splitting.ParseBehavior(json, file, SplitBehavior.Isolated)),
            "WhitespaceSplit" => new CharSplitPreTokenizer(UnicodeClass.IsWhiteSpace, SplitBehavior.Removed),
            // tokenizers' Whitespace: the matches of \w+|[^\w\s]+ are the pieces, everything else is dropped.
            "Whitespace" => new SplitPreTokenizer(RegexPattern.Whitespace, SplitBehavior.Removed, invert: true),
            _ => throw JsonRead.Unsupported(file, "pre_tokenizer", type),
        };
    }

    public static char Replacement(JsonElement json, string file) =>
        JsonRead.OptionalString(json, "replacement", file) is { Length: 1 } r ? r[0]
            : throw JsonRead.Invalid(file, "Metaspace \"replacement\" must be one character");

    /// <summary>Newer files give prepend_scheme; older ones only add_prefix_space (true = always).</summary>
    public static PrependScheme ParsePrependScheme(JsonElement json, string file) =>
        JsonRead.OptionalString(json, "prepend_scheme", file) switch
        {
            "first" => PrependScheme.First,
            "always" => PrependScheme.Always,
            "never" => PrependScheme.Never,
            null => JsonRead.Bool(json, "add_prefix_space", true) ? PrependScheme.Always : PrependScheme.Never,
            var other => throw JsonRead.Invalid(file, $"Metaspace prepend_scheme \"{other}\""),
        };
}
