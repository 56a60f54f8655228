using System.Text;
using System.Text.RegularExpressions;

namespace Axolotl.Templates.Jinja;

enum Tok
{
    Text, NumericLiteral, StringLiteral, Identifier, Equals, OpenParen, CloseParen, OpenStatement, CloseStatement,
    OpenExpression, CloseExpression, OpenSquareBracket, CloseSquareBracket, OpenCurlyBracket, CloseCurlyBracket, Comma,
    Dot, Colon, Pipe, AdditiveBinaryOperator, MultiplicativeBinaryOperator, ExponentiationBinaryOperator,
    ComparisonBinaryOperator, UnaryOperator, Comment,
}

/// <summary>A token; <see cref="Pos"/> is its offset in the original template source.</summary>
sealed class Token(Tok type, string value, int pos)
{
    public Tok Type { get; } = type;
    public string Value { get; set; } = value;
    public int Pos { get; } = pos;
}

/// <summary>A syntax error at an offset of the original template source.</summary>
sealed class TemplateSyntaxError(string message, int pos) : Exception(message)
{
    public int Pos { get; } = pos;
}

/// <summary>
/// Tokenizer with the renderer's preprocessing: one trailing newline dropped, lstrip_blocks and trim_blocks on (as
/// transformers configures Jinja), transformers' {% generation %} tags removed. The passes keep a map from each
/// character back to its offset in the source, so errors name the line the user wrote.
/// </summary>
static class Lexer
{
    static readonly (string Seq, Tok Type)[] Table =
    [
        ("{%", Tok.OpenStatement), ("%}", Tok.CloseStatement), ("{{", Tok.OpenExpression), ("}}", Tok.CloseExpression),
        ("(", Tok.OpenParen), (")", Tok.CloseParen), ("{", Tok.OpenCurlyBracket), ("}", Tok.CloseCurlyBracket),
        ("[", Tok.OpenSquareBracket), ("]", Tok.CloseSquareBracket), (",", Tok.Comma), (".", Tok.Dot), (":", Tok.Colon),
        ("|", Tok.Pipe), ("<=", Tok.ComparisonBinaryOperator), (">=", Tok.ComparisonBinaryOperator),
        ("==", Tok.ComparisonBinaryOperator), ("!=", Tok.ComparisonBinaryOperator), ("<", Tok.ComparisonBinaryOperator),
        (">", Tok.ComparisonBinaryOperator), ("+", Tok.AdditiveBinaryOperator), ("-", Tok.AdditiveBinaryOperator),
        ("~", Tok.AdditiveBinaryOperator), ("**", Tok.ExponentiationBinaryOperator), ("*", Tok.MultiplicativeBinaryOperator),
        ("//", Tok.MultiplicativeBinaryOperator), ("/", Tok.MultiplicativeBinaryOperator), ("%", Tok.MultiplicativeBinaryOperator),
        ("=", Tok.Equals),
    ];

    const string Ws = @"[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]";
    static readonly Regex Generation = new($@"({Ws}*){{%(-?){Ws}*(?:end)?generation{Ws}*(-?)%}}({Ws}*)", RegexOptions.CultureInvariant);

    static bool IsWord(char c) => char.IsAsciiLetterOrDigit(c) || c == '_';
    static bool IsLineTerminator(char c) => c is '\n' or '\r' or '\u2028' or '\u2029';

    /// <summary>Source text after preprocessing, with each character's offset in the original.</summary>
    static (string Text, int[] Map) Preprocess(string source)
    {
        var chars = new StringBuilder(source);
        var map = Enumerable.Range(0, source.Length + 1).ToList();
        if (source.EndsWith('\n')) { chars.Length--; map.RemoveAt(map.Count - 2); }

        // lstrip_blocks: spaces and tabs before {% or {# (or {-) at the start of a line go.
        var s = chars.ToString();
        var keep = new bool[s.Length];
        Array.Fill(keep, true);
        for (int i = 0; i < s.Length; i++)
        {
            if (i > 0 && !IsLineTerminator(s[i - 1])) continue;
            int j = i;
            while (j < s.Length && s[j] is ' ' or '\t') j++;
            if (j > i && j + 1 < s.Length && s[j] == '{' && s[j + 1] is '#' or '%' or '-')
                for (int k = i; k < j; k++) keep[k] = false;
        }
        (s, map) = Filter(s, map, keep);

        // trim_blocks: the newline right after a block tag goes.
        keep = new bool[s.Length];
        Array.Fill(keep, true);
        for (int i = 2; i < s.Length; i++)
            if (s[i] == '\n' && s[i - 1] == '}' && s[i - 2] is '#' or '%' or '-') keep[i] = false;
        (s, map) = Filter(s, map, keep);

        keep = new bool[s.Length];
        Array.Fill(keep, true);
        foreach (Match m in Generation.Matches(s))
        {
            for (int k = m.Index; k < m.Index + m.Length; k++) keep[k] = false;
            if (m.Groups[2].Length == 0) for (int k = m.Groups[1].Index; k < m.Groups[1].Index + m.Groups[1].Length; k++) keep[k] = true;
            if (m.Groups[3].Length == 0) for (int k = m.Groups[4].Index; k < m.Groups[4].Index + m.Groups[4].Length; k++) keep[k] = true;
        }
        (s, map) = Filter(s, map, keep);
        return (s, map.ToArray());
    }

    static (string, List<int>) Filter(string s, List<int> map, bool[] keep)
    {
        var sb = new StringBuilder(s.Length);
        var newMap = new List<int>(map.Count);
        for (int i = 0; i < s.Length; i++)
            if (keep[i]) { sb.Append(s[i]); newMap.Add(map[i]); }
        newMap.Add(map[s.Length]); // end of input
        return (sb.ToString(), newMap);
    }

    public static List<Token> Tokenize(string source)
    {
        var (src, map) = Preprocess(source);
        var tokens = new List<Token>();
        int cursor = 0, curlyDepth = 0;
        int Orig(int p) => map[Math.Min(p, src.Length)];
        TemplateSyntaxError Error(string message, int p) => new(message, Orig(p));
        char At(int p) => p < src.Length ? src[p] : '\0';
        bool AtEnd(int p) => p >= src.Length;
        string Slice(int p, int n) => p >= src.Length ? "" : src.Substring(p, Math.Min(n, src.Length - p));
        Tok? LastType() => tokens.Count > 0 ? tokens[^1].Type : null;

        string ConsumeWhile(Func<char, bool> predicate, bool stringLiteral = false)
        {
            var sb = new StringBuilder();
            // Past the end, the renderer's predicates see `undefined`: only a string literal's "not the quote" holds.
            while (AtEnd(cursor) ? stringLiteral : predicate(src[cursor]))
            {
                if (AtEnd(cursor)) throw Error("Unexpected end of input", cursor);
                if (src[cursor] == '\\')
                {
                    int start = cursor;
                    ++cursor;
                    if (AtEnd(cursor)) throw Error("Unexpected end of input", cursor);
                    var escaped = src[cursor++];
                    if (escaped is 'x' or 'u')
                    {
                        int length = escaped == 'x' ? 2 : 4;
                        var hex = Slice(cursor, length);
                        if (hex.Length != length || !hex.All(char.IsAsciiHexDigit))
                            throw Error($"Invalid hexadecimal escape sequence: \\{escaped}{hex}", start);
                        sb.Append((char)Convert.ToInt32(hex, 16));
                        cursor += length;
                        continue;
                    }
                    sb.Append(escaped switch
                    {
                        'n' => "\n", 't' => "\t", 'r' => "\r", 'b' => "\b", 'f' => "\f", 'v' => "\v",
                        '\'' => "'", '"' => "\"", '\\' => "\\",
                        _ => throw Error($"Unexpected escaped character: {escaped}", start),
                    });
                    continue;
                }
                sb.Append(src[cursor++]);
                if (AtEnd(cursor)) throw Error("Unexpected end of input", cursor);
            }
            return sb.ToString();
        }

        void StripTrailingWhitespace()
        {
            if (tokens.Count > 0 && tokens[^1].Type == Tok.Text)
            {
                tokens[^1].Value = Js.TrimEnd(tokens[^1].Value);
                if (tokens[^1].Value.Length == 0) tokens.RemoveAt(tokens.Count - 1);
            }
        }

        void SkipLeadingWhitespace() { while (cursor < src.Length && Js.IsWhiteSpace(src[cursor])) ++cursor; }

        while (cursor < src.Length)
        {
            var last = LastType();
            if (last is null or Tok.CloseStatement or Tok.CloseExpression or Tok.Comment)
            {
                int start = cursor;
                while (cursor < src.Length && !(src[cursor] == '{' && At(cursor + 1) is '%' or '{' or '#')) cursor++;
                if (cursor > start) { tokens.Add(new Token(Tok.Text, src[start..cursor], Orig(start))); continue; }
            }

            if (src[cursor] == '{' && At(cursor + 1) == '#')
            {
                int start = cursor;
                cursor += 2;
                bool stripBefore = At(cursor) == '-';
                if (stripBefore) ++cursor;
                var comment = new StringBuilder();
                while (At(cursor) != '#' || At(cursor + 1) != '}')
                {
                    if (cursor + 2 >= src.Length) throw Error("Missing end of comment tag", start);
                    comment.Append(src[cursor++]);
                }
                bool stripAfter = comment.Length > 0 && comment[^1] == '-';
                if (stripAfter) comment.Length--;
                if (stripBefore) StripTrailingWhitespace();
                tokens.Add(new Token(Tok.Comment, comment.ToString(), Orig(start)));
                cursor += 2;
                if (stripAfter) SkipLeadingWhitespace();
                continue;
            }

            if (Slice(cursor, 3) == "{%-")
            {
                StripTrailingWhitespace();
                tokens.Add(new Token(Tok.OpenStatement, "{%", Orig(cursor)));
                cursor += 3;
                continue;
            }
            if (Slice(cursor, 3) == "{{-")
            {
                StripTrailingWhitespace();
                tokens.Add(new Token(Tok.OpenExpression, "{{", Orig(cursor)));
                curlyDepth = 0;
                cursor += 3;
                continue;
            }

            ConsumeWhile(Js.IsWhiteSpace);

            if (Slice(cursor, 3) == "-%}")
            {
                tokens.Add(new Token(Tok.CloseStatement, "%}", Orig(cursor)));
                cursor += 3;
                SkipLeadingWhitespace();
                continue;
            }
            if (Slice(cursor, 3) == "-}}")
            {
                tokens.Add(new Token(Tok.CloseExpression, "}}", Orig(cursor)));
                cursor += 3;
                SkipLeadingWhitespace();
                continue;
            }

            var ch = At(cursor);
            int pos = cursor;
            if (ch is '-' or '+')
            {
                var lastType = LastType();
                if (lastType is null or Tok.Text) throw Error($"Unexpected character: {ch}", cursor);
                if (lastType is not (Tok.Identifier or Tok.NumericLiteral or Tok.StringLiteral or Tok.CloseParen or Tok.CloseSquareBracket))
                {
                    ++cursor;
                    var num = ConsumeWhile(char.IsAsciiDigit);
                    if (num.Length > 0 && At(cursor) == '.' && char.IsAsciiDigit(At(cursor + 1)))
                    {
                        ++cursor;
                        num = num + "." + ConsumeWhile(char.IsAsciiDigit);
                    }
                    tokens.Add(new Token(num.Length > 0 ? Tok.NumericLiteral : Tok.UnaryOperator, ch + num, Orig(pos)));
                    continue;
                }
            }

            bool matched = false;
            foreach (var (seq, type) in Table)
            {
                if (seq == "}}" && curlyDepth > 0) continue;
                if (Slice(cursor, seq.Length) != seq) continue;
                tokens.Add(new Token(type, seq, Orig(cursor)));
                if (type == Tok.OpenExpression) curlyDepth = 0;
                else if (type == Tok.OpenCurlyBracket) ++curlyDepth;
                else if (type == Tok.CloseCurlyBracket) --curlyDepth;
                cursor += seq.Length;
                matched = true;
                break;
            }
            if (matched) continue;

            if (ch is '\'' or '"')
            {
                ++cursor;
                var str = ConsumeWhile(c => c != ch, stringLiteral: true);
                tokens.Add(new Token(Tok.StringLiteral, str, Orig(pos)));
                ++cursor;
                continue;
            }
            if (char.IsAsciiDigit(ch))
            {
                var num = ConsumeWhile(char.IsAsciiDigit);
                if (LastType() != Tok.Dot && At(cursor) == '.' && char.IsAsciiDigit(At(cursor + 1)))
                {
                    ++cursor;
                    num = num + "." + ConsumeWhile(char.IsAsciiDigit);
                }
                tokens.Add(new Token(Tok.NumericLiteral, num, Orig(pos)));
                continue;
            }
            if (IsWord(ch))
            {
                tokens.Add(new Token(Tok.Identifier, ConsumeWhile(IsWord), Orig(pos)));
                continue;
            }
            throw Error($"Unexpected character: {ch}", cursor);
        }
        return tokens;
    }
}
