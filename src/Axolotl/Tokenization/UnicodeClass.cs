using System.Globalization;
using System.Text;

namespace Axolotl.Tokenization;

/// <summary>Character classes as the Rust side of HF tokenizers sees them (Oniguruma and the regex crate).</summary>
static class UnicodeClass
{
    /// <summary>The Unicode White_Space property: what both Oniguruma's and Rust regex's <c>\s</c> match.
    /// .NET's <c>\s</c> and <c>char.IsWhiteSpace</c> differ from it, so it is spelled out.</summary>
    public static bool IsWhiteSpace(int cp) => cp switch
    {
        >= 0x09 and <= 0x0D => true,
        0x20 or 0x85 or 0xA0 or 0x1680 or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        >= 0x2000 and <= 0x200A => true,
        _ => false,
    };

    public static bool IsLetter(int cp) => CharUnicodeInfo.GetUnicodeCategory(cp) switch
    {
        UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
            or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => true,
        _ => false,
    };

    public static bool IsNumber(int cp) => CharUnicodeInfo.GetUnicodeCategory(cp) switch
    {
        UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => true,
        _ => false,
    };

    /// <summary>Rust's <c>is_ascii_punctuation() || is_punctuation()</c>: ASCII symbols and every P* category.</summary>
    public static bool IsPunctuation(int cp)
    {
        if (cp < 0x80) return cp is >= 0x21 and <= 0x2F or >= 0x3A and <= 0x40 or >= 0x5B and <= 0x60 or >= 0x7B and <= 0x7E;
        return CharUnicodeInfo.GetUnicodeCategory(cp) switch
        {
            UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
                or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
                or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation => true,
            _ => false,
        };
    }

    /// <summary>Rust regex's Unicode <c>\w</c>: Alphabetic, marks, decimal digits, connector punctuation, joiners.
    /// Alphabetic is approximated by letters, letter numbers and the circled letters.</summary>
    public static bool IsWordChar(int cp)
    {
        if (cp is 0x200C or 0x200D || cp is >= 0x24B6 and <= 0x24E9) return true;
        return CharUnicodeInfo.GetUnicodeCategory(cp) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter or UnicodeCategory.LetterNumber
                or UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark
                or UnicodeCategory.DecimalDigitNumber or UnicodeCategory.ConnectorPunctuation => true,
            _ => false,
        };
    }

    /// <summary>The code point at <paramref name="i"/>; a lone surrogate reads as U+FFFD, as UTF-8 encoding would make it.</summary>
    public static int CodePointAt(ReadOnlySpan<char> s, int i, out int length)
    {
        var status = Rune.DecodeFromUtf16(s[i..], out var rune, out length);
        return status == System.Buffers.OperationStatus.Done ? rune.Value : 0xFFFD;
    }

    /// <summary>The code point that ends just before <paramref name="end"/>.</summary>
    public static int CodePointBefore(string s, int end)
    {
        var status = Rune.DecodeLastFromUtf16(s.AsSpan(0, end), out var rune, out _);
        return status == System.Buffers.OperationStatus.Done ? rune.Value : 0xFFFD;
    }
}
