using System.Text;
using System.Text.Json.Nodes;
using CsCheck;

namespace Axolotl.Tests.Reliability;

/// <summary>
/// Runs a parser over generated inputs: each must parse or throw <see cref="UserError"/>; any other exception, or an
/// input that does not finish within a generous bound, fails with the seed and iteration that reproduce it. The inputs
/// come from a fixed seed, so a run is repeatable; AXOLOTL_FUZZ_SEED picks another to explore. A new parser is one line:
/// <c>FuzzAssert.OnlyUserErrors(text => Parse(text), FuzzGen.Mutations(realInputs, FuzzGen.JinjaAlphabet));</c>
/// </summary>
public static class FuzzAssert
{
    public const ulong DefaultSeed = 20261129;

    // Not a speed requirement: a bound that only an endless loop or runaway allocation reaches.
    static readonly TimeSpan PerInput = TimeSpan.FromSeconds(20);

    public static void OnlyUserErrors<T>(Func<T, object?> parse, Gen<T> inputs, int iterations = 200, Func<T, string>? show = null)
    {
        var seed = ulong.TryParse(Environment.GetEnvironmentVariable("AXOLOTL_FUZZ_SEED"), out var s) ? s : DefaultSeed;
        var pcg = new PCG(1, seed);
        show ??= x => x is byte[] b ? Convert.ToHexString(b.AsSpan(0, Math.Min(b.Length, 512))) : Shorten(x?.ToString() ?? "null");
        for (int i = 0; i < iterations; i++)
        {
            var input = inputs.Generate(pcg, null, out _);
            var run = Task.Run(() => parse(input));
            string? failure = null;
            try
            {
                if (!run.Wait(PerInput)) failure = $"did not finish within {PerInput.TotalSeconds} s";
            }
            catch (AggregateException e) when (e.InnerException is UserError) { }
            catch (AggregateException e) { failure = $"threw {e.InnerException}"; }
            if (failure != null)
                Assert.Fail($"fuzz input {i} (seed {seed}; AXOLOTL_FUZZ_SEED={seed} reproduces it) {failure}\ninput: {show(input)}");
        }
    }

    static string Shorten(string text) => text.Length > 2000 ? text[..2000] + "…" : text;
}

/// <summary>Generators of broken inputs: random text or bytes, and mutations of real files.</summary>
public static class FuzzGen
{
    /// <summary>Random text over an alphabet heavy in the characters a format gives meaning to.</summary>
    public static Gen<string> Text(string alphabet, int maxLength = 200) => Gen.String[Gen.Char[alphabet], 0, maxLength];

    /// <summary>One of the seeds with 1 to 4 random edits: deletions, insertions of format characters, duplications, cuts, line swaps.</summary>
    public static Gen<string> Mutations(IReadOnlyList<string> seeds, string alphabet, bool jsonEdits = false) =>
        Gen.Select(Gen.Int[0, seeds.Count - 1], TextEdit(alphabet, jsonEdits).Array[1, 4],
            (i, edits) => edits.Aggregate(seeds[i], (text, edit) => edit(text)));

    /// <summary>One of the seeds with 1 to 4 byte edits: bit flips, extreme bytes, cuts, insertions, a rewritten length prefix.</summary>
    public static Gen<byte[]> Mutations(IReadOnlyList<byte[]> seeds) =>
        Gen.Select(Gen.Int[0, seeds.Count - 1], ByteEdit.Array[1, 4],
            (i, edits) => edits.Aggregate(seeds[i], (bytes, edit) => edit(bytes)));

    static Gen<Func<string, string>> TextEdit(string alphabet, bool jsonEdits) =>
        Gen.Select(Gen.Int[0, jsonEdits ? 9 : 5], Gen.Double[0, 1], Gen.Double[0, 1], Gen.String[Gen.Char[alphabet], 1, 6],
            (kind, a, b, text) => (Func<string, string>)(s => EditText(s, kind, a, b, text)));

    static string EditText(string s, int kind, double a, double b, string text)
    {
        int p = Pick(a, s.Length + 1), n = (int)(b * Math.Min(40, s.Length - p));
        switch (kind)
        {
            case 0: return s.Remove(p, n);
            case 1: return s.Insert(p, text);
            case 2: return s.Insert(Pick(b, s.Length + 1), s.Substring(p, n));
            case 3: return s[..p];
            case 4: return s.Remove(p, Math.Min(1, s.Length - p)).Insert(p, text);
            case 5:
                var lines = s.Split('\n');
                int i = Pick(a, lines.Length), j = Pick(b, lines.Length);
                (lines[i], lines[j]) = (lines[j], lines[i]);
                return string.Join('\n', lines);
            default: return EditJson(s, kind, a, b, text);
        }
    }

    /// <summary>An index below <paramref name="count"/> from a fraction in [0, 1].</summary>
    static int Pick(double fraction, int count) => Math.Clamp((int)(fraction * count), 0, count - 1);

    static readonly JsonNode?[] Replacements = [null, 0, -1, 1.5, 1e300, long.MaxValue, "", "x", true, new JsonArray(), new JsonObject()];

    /// <summary>
    /// A structural edit of JSON text (a node replaced by a value of another kind, removed, or nested deeply), so that
    /// inputs get past the JSON parser to the code that reads the fields.
    /// </summary>
    static string EditJson(string s, int kind, double a, double b, string text)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(s, documentOptions: new() { AllowDuplicateProperties = false }); }
        catch (System.Text.Json.JsonException) { return s; }
        if (root == null) return s;
        var nodes = new List<JsonNode>();
        void Walk(JsonNode n)
        {
            nodes.Add(n);
            if (n is JsonObject o) foreach (var (_, v) in o) { if (v != null) Walk(v); }
            else if (n is JsonArray arr) foreach (var v in arr) { if (v != null) Walk(v); }
        }
        Walk(root);
        var target = nodes[Pick(a, nodes.Count)];
        var parent = target.Parent;
        if (parent == null) return s;
        var replacement = Replacements[Pick(b, Replacements.Length)]?.DeepClone();
        if (kind == 7) replacement = JsonNode.Parse(new string('[', 40) + new string(']', 40));
        if (kind == 8 && target is JsonValue v && v.TryGetValue<string>(out var str)) replacement = str + text;
        if (parent is JsonObject po)
        {
            var name = target.GetPropertyName();
            if (kind == 9) po.Remove(name); else po[name] = replacement;
        }
        else if (parent is JsonArray pa)
        {
            int index = target.GetElementIndex();
            if (kind == 9) pa.RemoveAt(index); else pa[index] = replacement;
        }
        return root.ToJsonString();
    }

    static readonly Gen<Func<byte[], byte[]>> ByteEdit =
        Gen.Select(Gen.Int[0, 6], Gen.Double[0, 1], Gen.Double[0, 1], Gen.Byte.Array[1, 8],
            (kind, a, b, bytes) => (Func<byte[], byte[]>)(s => EditBytes(s, kind, a, b, bytes)));

    static byte[] EditBytes(byte[] s, int kind, double a, double b, byte[] bytes)
    {
        if (s.Length == 0) return bytes;
        int p = Pick(a, s.Length), n = (int)(b * Math.Min(64, s.Length - p));
        var copy = s.ToArray();
        switch (kind)
        {
            case 0: copy[p] ^= (byte)(1 << Pick(b, 8)); return copy;
            case 1: copy[p] = b < 0.5 ? (byte)0 : (byte)0xFF; return copy;
            case 2: copy[p] = bytes[0]; return copy;
            case 3: return s[..p];
            case 4: return [.. s[..p], .. bytes, .. s[p..]];
            case 5: return [.. s[..p], .. s[(p + n)..]];
            default:
                // The length prefix is what a reader trusts first: point it just short of, at, or past the end.
                if (s.Length >= 8) BitConverter.GetBytes((ulong)Math.Max(0, s.Length - 8 + (int)(b * 16) - 8)).CopyTo(copy, 0);
                return copy;
        }
    }

    public const string YamlAlphabet = "abcdeklmnprstuy_019.:-[]{}&*!|>'\"%@`#,? \n\n\n\t  ~";
    public const string JinjaAlphabet = "{}%#-+~|.,:()[]'\"abefijlnorstx0 \n";
    public const string JsonAlphabet = "abcxyz019.-+eE:,[]{}\"\\ \n\t\u00e9\u0000nultrf";

    public static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
}
