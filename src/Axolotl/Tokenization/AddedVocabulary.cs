using System.Buffers;

namespace Axolotl.Tokenization;

sealed record AddedToken(string Content, bool SingleWord = false, bool LStrip = false, bool RStrip = false,
    bool Normalized = false, bool Special = false);

/// <summary>
/// Tokens matched in the text before the model sees it, as tokenizers' <c>AddedVocabulary</c>: non-normalized
/// tokens are found in the raw text, normalized ones (by their normalized form) in each normalized piece.
/// </summary>
sealed class AddedVocabulary
{
    readonly Dictionary<string, int> _contentToId = new();
    readonly Dictionary<int, AddedToken> _idToToken = new();
    readonly HashSet<string> _special = new();
    Matcher _raw = Matcher.Empty, _normalized = Matcher.Empty;

    public IEnumerable<string> Contents => _contentToId.Keys;
    /// <summary>Every added token with its id, in id order (tokenizer.json's added_tokens).</summary>
    public IEnumerable<(int Id, AddedToken Token)> All => _idToToken.OrderBy(kv => kv.Key).Select(kv => (kv.Key, kv.Value));
    public int? TokenToId(string content) => _contentToId.TryGetValue(content, out var id) ? id : null;
    public string? IdToToken(int id) => _idToToken.TryGetValue(id, out var t) ? t.Content : null;
    public bool IsSpecial(string content) => _special.Contains(content);
    public void MarkSpecial(string content) { if (_contentToId.ContainsKey(content)) _special.Add(content); }

    /// <summary>Adds (or replaces) a token under a known id; call <see cref="Build"/> once all are in.</summary>
    public void Add(AddedToken token, int id)
    {
        if (token.Content.Length == 0) return;
        _contentToId[token.Content] = id;
        _idToToken[id] = token;
        if (token.Special) _special.Add(token.Content);
    }

    public int MaxId => _idToToken.Count == 0 ? -1 : _idToToken.Keys.Max();

    public void Build(Func<string, string>? normalize)
    {
        var raw = new List<(string, int)>();
        var normalized = new List<(string, int)>();
        foreach (var (id, token) in _idToToken)
        {
            if (token.Normalized) normalized.Add((normalize?.Invoke(token.Content) ?? token.Content, id));
            else raw.Add((token.Content, id));
        }
        _raw = new Matcher(raw);
        _normalized = new Matcher(normalized);
    }

    /// <summary>Splits raw text around non-normalized added tokens: (start, end, id or -1 for plain text).</summary>
    public List<(int Start, int End, int Id)> SplitRaw(string text) => FindMatches(text, _raw);

    /// <summary>Splits a normalized piece around normalized added tokens.</summary>
    public List<(int Start, int End, int Id)> SplitNormalized(string text) => FindMatches(text, _normalized);

    List<(int Start, int End, int Id)> FindMatches(string s, Matcher matcher)
    {
        var splits = new List<(int, int, int)>();
        int startOffset = 0;
        foreach (var (matchStart, matchEnd, id) in matcher.LeftmostLongest(s))
        {
            int start = matchStart, stop = matchEnd;
            var token = _idToToken[id];
            if (token.SingleWord)
            {
                bool spaceBefore = start == 0 || !UnicodeClass.IsWordChar(UnicodeClass.CodePointBefore(s, start));
                bool spaceAfter = stop == s.Length || !UnicodeClass.IsWordChar(UnicodeClass.CodePointAt(s, stop, out _));
                if (!spaceBefore || !spaceAfter) continue;
            }
            if (token.LStrip)
            {
                int newStart = start; // White_Space is all in the BMP, so stepping by UTF-16 unit is exact
                while (newStart > 0 && UnicodeClass.IsWhiteSpace(s[newStart - 1])) newStart--;
                start = Math.Max(newStart, startOffset); // whitespace already taken by the previous match stays there
            }
            if (token.RStrip)
            {
                while (stop < s.Length && UnicodeClass.IsWhiteSpace(s[stop])) stop++;
            }
            if (startOffset < start) splits.Add((startOffset, start, -1));
            splits.Add((start, stop, id));
            startOffset = stop;
        }
        if (startOffset < s.Length) splits.Add((startOffset, s.Length, -1));
        return splits;
    }

    /// <summary>Leftmost-longest, non-overlapping pattern search (what the Aho-Corasick automaton of tokenizers does).</summary>
    sealed class Matcher
    {
        public static readonly Matcher Empty = new([]);
        readonly Dictionary<char, (string Pattern, int Id)[]> _byFirstChar;
        readonly SearchValues<char> _firstChars;

        public Matcher(List<(string Pattern, int Id)> patterns)
        {
            _byFirstChar = patterns.Where(p => p.Pattern.Length > 0)
                .GroupBy(p => p.Pattern[0])
                .ToDictionary(g => g.Key, g => g.OrderByDescending(p => p.Pattern.Length).ToArray());
            _firstChars = SearchValues.Create(_byFirstChar.Keys.ToArray());
        }

        public IEnumerable<(int Start, int End, int Id)> LeftmostLongest(string s)
        {
            if (_byFirstChar.Count == 0) yield break;
            int i = 0;
            while (i < s.Length)
            {
                int found = s.AsSpan(i).IndexOfAny(_firstChars);
                if (found < 0) yield break;
                i += found;
                (string Pattern, int Id)? match = null;
                foreach (var candidate in _byFirstChar[s[i]])
                {
                    if (string.CompareOrdinal(s, i, candidate.Pattern, 0, candidate.Pattern.Length) == 0
                        && i + candidate.Pattern.Length <= s.Length) { match = candidate; break; }
                }
                if (match is { } m) { yield return (i, i + m.Pattern.Length, m.Id); i += m.Pattern.Length; }
                else i++;
            }
        }
    }
}
