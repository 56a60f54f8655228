using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Axolotl.Tokenization;

/// <summary>
/// A tokenizers pattern (<c>{"String": ...}</c> or <c>{"Regex": ...}</c>) matched the way Oniguruma matches it: over
/// code points. .NET's regex works on UTF-16 units, so a letter outside the BMP would be two surrogates, neither of
/// them <c>\p{L}</c>. The matcher therefore runs on a stand-in text in which every astral code point is replaced by
/// one BMP character of the same Unicode category, and maps the match offsets back.
/// </summary>
sealed class RegexPattern
{
    /// <summary>tokenizers' Whitespace pattern <c>\w+|[^\w\s]+</c>, with Rust's Unicode <c>\w</c> (all marks, letter
    /// numbers, joiners and the circled letters, which .NET's <c>\w</c> leaves out) spelled out.</summary>
    public static readonly RegexPattern Whitespace = new(
        @"[\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\u200C\u200D\u24B6-\u24E9]+|[^\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc}\u200C\u200D\u24B6-\u24E9\s]+", "Whitespace");

    readonly Regex _regex;

    public RegexPattern(string regex, string source)
    {
        try { _regex = new Regex(regex, RegexOptions.Compiled | RegexOptions.CultureInvariant); }
        catch (ArgumentException e) { throw new UserError($"{source}: the regex {regex} is not supported here: {e.Message}", e); }
    }

    public static RegexPattern FromJson(JsonElement obj, string file, string component)
    {
        var pattern = JsonRead.Get(obj, "pattern") ?? throw JsonRead.Invalid(file, $"{component} without a pattern");
        if (JsonRead.Get(pattern, "String") is { ValueKind: JsonValueKind.String } s) return new RegexPattern(Regex.Escape(s.GetString()!), file);
        if (JsonRead.Get(pattern, "Regex") is { ValueKind: JsonValueKind.String } r) return new RegexPattern(r.GetString()!, file);
        throw JsonRead.Invalid(file, $"the {component} pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}");
    }

    /// <summary>Each match and each stretch between matches, in order (Split with Isolated behaviour).</summary>
    public void ForEachSpan(ReadOnlySpan<char> text, bool atStart, PieceSink sink)
    {
        if (text.ContainsAnyInRange('\uD800', '\uDBFF'))
        {
            foreach (var (start, end, _) in FindMatches(text)) sink(text.Slice(start, end - start), atStart && start == 0);
            return;
        }
        int previous = 0;
        foreach (var match in _regex.EnumerateMatches(text))
        {
            if (previous != match.Index) sink(text.Slice(previous, match.Index - previous), atStart && previous == 0);
            if (match.Length > 0) sink(text.Slice(match.Index, match.Length), atStart && match.Index == 0);
            previous = match.Index + match.Length;
        }
        if (previous != text.Length) sink(text.Slice(previous), atStart && previous == 0);
    }

    /// <summary>The text cut into consecutive spans, each marked as a match or not (tokenizers' <c>find_matches</c>).</summary>
    public List<(int Start, int End, bool IsMatch)> FindMatches(ReadOnlySpan<char> text)
    {
        var spans = new List<(int Start, int End, bool IsMatch)>();
        if (text.Length == 0) return spans;
        bool astral = text.ContainsAnyInRange('\uD800', '\uDBFF');
        int[]? offsets = null;
        ReadOnlySpan<char> subject = astral ? StandIn(text, out offsets) : text;
        int previous = 0;
        foreach (var match in _regex.EnumerateMatches(subject))
        {
            int start = offsets?[match.Index] ?? match.Index;
            int end = offsets?[match.Index + match.Length] ?? match.Index + match.Length;
            if (previous != start) spans.Add((previous, start, false));
            spans.Add((start, end, true));
            previous = end;
        }
        if (previous != text.Length) spans.Add((previous, text.Length, false));
        return spans;
    }

    /// <summary>Every match replaced by <paramref name="content"/>, taken literally.</summary>
    public string Replace(string text, string content)
    {
        var builder = new System.Text.StringBuilder(text.Length);
        foreach (var (start, end, isMatch) in FindMatches(text))
        {
            if (isMatch) builder.Append(content);
            else builder.Append(text.AsSpan(start, end - start));
        }
        return builder.ToString();
    }

    static string StandIn(ReadOnlySpan<char> text, out int[]? offsets)
    {
        var chars = new char[text.Length];
        offsets = new int[text.Length + 1];
        int n = 0;
        for (int i = 0; i < text.Length;)
        {
            offsets[n] = i;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                chars[n++] = Representative[(int)CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))];
                i += 2;
            }
            else chars[n++] = text[i++];
        }
        offsets[n] = text.Length;
        return new string(chars, 0, n);
    }

    // For each category, a BMP character of it taken from the top of the BMP, where no tokenizer pattern names
    // characters literally (categories only found outside the BMP keep U+FFFD, an "other symbol").
    static readonly char[] Representative = BuildRepresentatives();

    static char[] BuildRepresentatives()
    {
        var map = Enumerable.Repeat('\uFFFD', 32).ToArray();
        var found = new bool[32];
        for (int c = 0xFFFD; c >= 0x100; c--)
        {
            if (c is >= 0xD800 and <= 0xDFFF) continue;
            int category = (int)CharUnicodeInfo.GetUnicodeCategory((char)c);
            if (found[category] || UnicodeClass.IsWhiteSpace(c)) continue;
            map[category] = (char)c;
            found[category] = true;
        }
        return map;
    }
}
