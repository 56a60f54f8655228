using System.Text;

namespace Axolotl.Tokenization;

/// <summary>
/// NFC, NFD, NFKC and NFKD from a table shipped with the assembly (Data/unicode-normalization.txt, made from Python's
/// unicodedata by tools/tokenizer-goldens/make_normalization_table.py). string.Normalize cannot be used: with
/// InvariantGlobalization, which the project sets, it returns text unnormalized; turning invariant mode off would make
/// number formatting and casing follow the user's locale everywhere in the program.
/// </summary>
static class UnicodeNormalization
{
    const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7, LCount = 19, VCount = 21, TCount = 28,
        NCount = VCount * TCount, SCount = LCount * NCount;

    sealed class Tables
    {
        public readonly Dictionary<int, byte> Ccc = new();
        public readonly Dictionary<int, int[]> Canonical = new();
        public readonly Dictionary<int, int[]> Compatibility = new();
        public readonly Dictionary<long, int> Compose = new();
    }

    static readonly Lazy<Tables> Data = new(Load);

    static Tables Load()
    {
        var tables = new Tables();
        using var stream = typeof(UnicodeNormalization).Assembly.GetManifestResourceStream("Axolotl.Tokenization.unicode-normalization.txt")
            ?? throw new InvalidOperationException("the Unicode normalization table is not embedded in the assembly");
        using var reader = new StreamReader(stream);
        static int Hex(string s) => Convert.ToInt32(s, 16);
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0 || line[0] == '#') continue;
            var parts = line.Split(' ');
            int cp = Hex(parts[1]);
            if (parts[0] == "C") { tables.Compose[Pair(Hex(parts[2]), Hex(parts[3]))] = cp; continue; }
            if (parts[2] != "0") tables.Ccc[cp] = byte.Parse(parts[2]);
            int bar = Array.IndexOf(parts, "|");
            var canonical = parts[3..(bar < 0 ? parts.Length : bar)].Select(Hex).ToArray();
            if (canonical.Length != 1 || canonical[0] != cp) tables.Canonical[cp] = canonical;
            tables.Compatibility[cp] = bar < 0 ? canonical : parts[(bar + 1)..].Select(Hex).ToArray();
        }
        return tables;
    }

    static long Pair(int a, int b) => ((long)a << 21) | (uint)b;

    public static string Normalize(string text, NormalizationForm form)
    {
        // Below U+00A0 every character is stable under all four forms.
        if (!text.AsSpan().ContainsAnyExceptInRange('\0', '\u009F')) return text;
        var tables = Data.Value;
        bool compat = form is NormalizationForm.FormKC or NormalizationForm.FormKD;
        var cps = Decompose(text, compat, tables);
        if (form is NormalizationForm.FormC or NormalizationForm.FormKC) cps = Compose(cps, tables);
        var builder = new StringBuilder(text.Length);
        foreach (var cp in cps) builder.Append(char.ConvertFromUtf32(cp));
        return builder.ToString();
    }

    static int Ccc(Tables t, int cp) => t.Ccc.TryGetValue(cp, out var c) ? c : 0;

    static List<int> Decompose(string text, bool compat, Tables t)
    {
        var result = new List<int>(text.Length + 8);
        for (int i = 0; i < text.Length;)
        {
            int cp = UnicodeClass.CodePointAt(text, i, out int len);
            // A lone surrogate stays as it is (it is not a scalar value the table could know).
            if (char.IsSurrogate(text[i]) && len == 1) cp = text[i];
            i += len;
            int s = cp - SBase;
            if (s is >= 0 and < SCount)
            {
                result.Add(LBase + s / NCount);
                result.Add(VBase + s % NCount / TCount);
                if (s % TCount != 0) result.Add(TBase + s % TCount);
            }
            else if ((compat ? t.Compatibility : t.Canonical).TryGetValue(cp, out var parts)) result.AddRange(parts);
            else result.Add(cp);
        }
        // Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 1; i < result.Count; i++)
        {
            int cc = Ccc(t, result[i]);
            if (cc == 0) continue;
            for (int j = i; j > 0 && Ccc(t, result[j - 1]) > cc; j--) (result[j - 1], result[j]) = (result[j], result[j - 1]);
        }
        return result;
    }

    static List<int> Compose(List<int> cps, Tables t)
    {
        var result = new List<int>(cps.Count);
        int starter = -1, lastCcc = 0;
        foreach (var cp in cps)
        {
            int cc = Ccc(t, cp);
            bool unblocked = starter >= 0 && (result.Count - 1 == starter || (lastCcc != 0 && lastCcc < cc));
            if (unblocked && ComposePair(t, result[starter], cp) is { } composite)
            {
                result[starter] = composite;
                continue;
            }
            if (cc == 0) starter = result.Count;
            lastCcc = cc;
            result.Add(cp);
        }
        return result;
    }

    static int? ComposePair(Tables t, int a, int b)
    {
        if (a is >= LBase and < LBase + LCount && b is >= VBase and < VBase + VCount)
            return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
        if (a - SBase is >= 0 and < SCount && (a - SBase) % TCount == 0 && b is > TBase and < TBase + TCount)
            return a + (b - TBase);
        return t.Compose.TryGetValue(Pair(a, b), out var c) ? c : null;
    }
}
