using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Axolotl.Templates.Jinja;

// Runtime values of the engine. They follow @huggingface/jinja's value model (the renderer transformers.js uses),
// including its JavaScript underpinnings: numbers are doubles, `==` is JavaScript's loose equality on the wrapped
// values, and `~`/`+`/`join` stringify the wrapped JavaScript values. Type names appear in error messages as there.

abstract class Value
{
    public abstract string TypeName { get; }

    /// <summary>Python-like truthiness (@huggingface/jinja's __bool__).</summary>
    public virtual bool Truthy => true;

    /// <summary>The text a value renders as in <c>{{ }}</c> (the runtime value's toString).</summary>
    public abstract string Render();

    public override string ToString() => Render();
}

sealed class IntValue(double value) : Value
{
    public double V { get; } = value;
    public override string TypeName => "IntegerValue";
    public override bool Truthy => V != 0 && !double.IsNaN(V);
    public override string Render() => Js.NumberToString(V);
}

sealed class FloatValue(double value) : Value
{
    public double V { get; } = value;
    public override string TypeName => "FloatValue";
    public override bool Truthy => V != 0 && !double.IsNaN(V);

    // Integral floats keep one decimal ("2.0"), as Python prints them.
    public override string Render()
    {
        if (V == 0 && double.IsNegative(V)) return "-0.0";
        if (double.IsFinite(V) && Math.Abs(V) < 1e21 && V % 1 == 0) return new BigInteger(V).ToString(CultureInfo.InvariantCulture) + ".0";
        return Js.NumberToString(V);
    }
}

sealed class StrValue(string value) : Value
{
    public string V { get; } = value;
    public override string TypeName => "StringValue";
    public override bool Truthy => V.Length > 0;
    public override string Render() => V;
}

sealed class BoolValue : Value
{
    public static readonly BoolValue True = new(true), False = new(false);
    BoolValue(bool value) => V = value;
    public static BoolValue Of(bool b) => b ? True : False;
    public bool V { get; }
    public override string TypeName => "BooleanValue";
    public override bool Truthy => V;
    public override string Render() => V ? "true" : "false";
}

sealed class NullValue : Value
{
    public static readonly NullValue Instance = new();
    public override string TypeName => "NullValue";
    public override bool Truthy => false;
    public override string Render() => "null";
}

sealed class UndefinedValue : Value
{
    public static readonly UndefinedValue Instance = new();
    public override string TypeName => "UndefinedValue";
    public override bool Truthy => false;
    public override string Render() => "undefined";
}

/// <summary>A mapping (a JSON object, a dict literal, loop). Keys keep their insertion order.</summary>
class ObjValue(OrderedDictionary<string, Value> map) : Value
{
    public OrderedDictionary<string, Value> Map { get; } = map;
    public ObjValue() : this(new OrderedDictionary<string, Value>()) { }
    public override string TypeName => "ObjectValue";
    public override bool Truthy => Map.Count > 0;
    public override string Render() => Json.Serialize(this, new JsonOptions(), 0, undefinedAsNull: false);

    public ArrayValue Items() => new(Map.Select(kv => (Value)new ArrayValue([new StrValue(kv.Key), kv.Value])).ToList());
}

/// <summary>Keyword arguments of a call, passed to functions as their last argument.</summary>
sealed class KwargsValue(OrderedDictionary<string, Value> map) : ObjValue(map)
{
    public override string TypeName => "KeywordArgumentsValue";
}

/// <summary>namespace(): attribute access and assignment, no mapping behaviour.</summary>
sealed class NamespaceValue(OrderedDictionary<string, Value> map) : Value
{
    public OrderedDictionary<string, Value> Map { get; } = map;
    public override string TypeName => "NamespaceValue";
    public override string Render() => Json.Serialize(this, new JsonOptions(), 0, undefinedAsNull: false);
}

class ArrayValue(List<Value> items) : Value
{
    public List<Value> Items { get; } = items;
    public override string TypeName => "ArrayValue";
    public override bool Truthy => Items.Count > 0;
    public override string Render() => Json.Serialize(this, new JsonOptions(), 0, undefinedAsNull: false);
}

sealed class TupleValue(List<Value> items) : ArrayValue(items)
{
    public override string TypeName => "TupleValue";
}

sealed class FuncValue(Func<List<Value>, Env, Value> call) : Value
{
    public Func<List<Value>, Env, Value> Call { get; } = call;
    public override string TypeName => "FunctionValue";
    public override string Render() => "function";
}

/// <summary>JavaScript semantics the renderer inherits: number formatting, loose equality, string conversion.</summary>
static class Js
{
    /// <summary>Number.prototype.toString(): shortest round-trip digits, exponent form outside [1e-6, 1e21).</summary>
    public static string NumberToString(double x)
    {
        if (double.IsNaN(x)) return "NaN";
        if (x == 0) return "0";
        if (double.IsInfinity(x)) return x > 0 ? "Infinity" : "-Infinity";
        if (x < 0) return "-" + NumberToString(-x);
        var r = x.ToString("R", CultureInfo.InvariantCulture);
        int exp = 0;
        var e = r.IndexOfAny(['E', 'e']);
        if (e >= 0) { exp = int.Parse(r[(e + 1)..], CultureInfo.InvariantCulture); r = r[..e]; }
        var dot = r.IndexOf('.');
        var intPart = dot < 0 ? r : r[..dot];
        var frac = dot < 0 ? "" : r[(dot + 1)..];
        var digits = (intPart + frac).TrimStart('0');
        // n: position of the decimal point relative to the first significant digit.
        int n = intPart.TrimStart('0').Length + exp;
        if (intPart.TrimStart('0').Length == 0) n = exp - (frac.Length - frac.TrimStart('0').Length);
        digits = digits.TrimEnd('0');
        int k = digits.Length;
        if (k <= n && n <= 21) return digits + new string('0', n - k);
        if (0 < n && n <= 21) return digits[..n] + "." + digits[n..];
        if (-6 < n && n <= 0) return "0." + new string('0', -n) + digits;
        var ee = n - 1;
        var sign = ee < 0 ? "-" : "+";
        return (k == 1 ? digits : digits[..1] + "." + digits[1..]) + "e" + sign + Math.Abs(ee).ToString(CultureInfo.InvariantCulture);
    }

    /// <summary>String(value) of the JavaScript value a runtime value wraps (what `~` and `+` concatenate).</summary>
    public static string RawString(Value v) => v switch
    {
        StrValue s => s.V,
        IntValue i => NumberToString(i.V),
        FloatValue f => NumberToString(f.V),
        BoolValue b => b.V ? "true" : "false",
        NullValue => "null",
        UndefinedValue => "undefined",
        ObjValue or NamespaceValue => "[object Map]",
        // Array.prototype.toString joins the elements' own toString, which is the runtime value's rendering.
        ArrayValue a => string.Join(",", a.Items.Select(x => x.Render())),
        _ => v.Render(),
    };

    /// <summary>Array.prototype.join's view of an element: null and undefined become empty.</summary>
    public static string JoinString(Value v) => v is NullValue or UndefinedValue ? "" : RawString(v);

    /// <summary>!!value of the wrapped JavaScript value (objects and arrays are always true there).</summary>
    public static bool RawTruthy(Value v) => v switch
    {
        IntValue i => i.V != 0 && !double.IsNaN(i.V),
        FloatValue f => f.V != 0 && !double.IsNaN(f.V),
        StrValue s => s.V.Length > 0,
        BoolValue b => b.V,
        NullValue or UndefinedValue => false,
        _ => true,
    };

    static object? Identity(Value v) => v switch
    {
        ObjValue o => o.Map,
        NamespaceValue n => n.Map,
        ArrayValue a => a.Items,
        FuncValue f => f.Call,
        _ => null,
    };

    static bool IsNumber(Value v) => v is IntValue or FloatValue;
    static double Num(Value v) => v switch { IntValue i => i.V, FloatValue f => f.V, _ => double.NaN };

    /// <summary>`a.value === b.value`.</summary>
    public static bool StrictEquals(Value a, Value b)
    {
        if (IsNumber(a) && IsNumber(b)) return Num(a) == Num(b);
        return (a, b) switch
        {
            (StrValue x, StrValue y) => x.V == y.V,
            (BoolValue x, BoolValue y) => x.V == y.V,
            (NullValue, NullValue) or (UndefinedValue, UndefinedValue) => true,
            _ => Identity(a) is { } ia && ReferenceEquals(ia, Identity(b)),
        };
    }

    /// <summary>`a.value == b.value` (JavaScript's IsLooselyEqual).</summary>
    public static bool LooseEquals(Value a, Value b)
    {
        static int Kind(Value v) => v switch
        {
            IntValue or FloatValue => 0, StrValue => 1, BoolValue => 2, NullValue or UndefinedValue => 3, _ => 4,
        };
        int ka = Kind(a), kb = Kind(b);
        if (ka == kb && !(a is NullValue && b is UndefinedValue) && !(a is UndefinedValue && b is NullValue))
            return ka == 3 || StrictEquals(a, b);
        if (ka == 3 || kb == 3) return ka == kb; // null == undefined, nothing else
        if (ka == 2) return LooseEquals(new IntValue(((BoolValue)a).V ? 1 : 0), b);
        if (kb == 2) return LooseEquals(a, new IntValue(((BoolValue)b).V ? 1 : 0));
        if (ka == 0 && kb == 1) return Num(a) == StringToNumber(((StrValue)b).V);
        if (ka == 1 && kb == 0) return StringToNumber(((StrValue)a).V) == Num(b);
        if (ka == 4 && kb != 4) return LooseEquals(new StrValue(RawString(a)), b);
        if (kb == 4 && ka != 4) return LooseEquals(a, new StrValue(RawString(b)));
        return false;
    }

    /// <summary>JavaScript's ToNumber on a string.</summary>
    public static double StringToNumber(string s)
    {
        s = Trim(s);
        if (s.Length == 0) return 0;
        if (s.Length > 2 && s[0] == '0' && "xXoObB".Contains(s[1]))
        {
            int radix = char.ToLowerInvariant(s[1]) switch { 'x' => 16, 'o' => 8, _ => 2 };
            double value = 0;
            foreach (var c in s[2..])
            {
                int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : c >= 'A' && c <= 'Z' ? c - 'A' + 10 : 99;
                if (d >= radix) return double.NaN;
                value = value * radix + d;
            }
            return value;
        }
        if (s is "Infinity" or "+Infinity") return double.PositiveInfinity;
        if (s == "-Infinity") return double.NegativeInfinity;
        foreach (var c in s) if (!(char.IsAsciiDigit(c) || c is '.' or 'e' or 'E' or '+' or '-')) return double.NaN;
        return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : double.NaN;
    }

    /// <summary>parseFloat: the longest prefix (after leading whitespace) that is a decimal literal.</summary>
    public static double ParseFloat(string s)
    {
        s = TrimStart(s);
        var m = System.Text.RegularExpressions.Regex.Match(s, @"^[+-]?(Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)");
        if (!m.Success) return double.NaN;
        var t = m.Value;
        if (t.EndsWith("Infinity")) return t.StartsWith('-') ? double.NegativeInfinity : double.PositiveInfinity;
        return double.Parse(t, NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    /// <summary>parseInt(s, 10).</summary>
    public static double ParseInt(string s)
    {
        s = TrimStart(s);
        var m = System.Text.RegularExpressions.Regex.Match(s, @"^[+-]?\d+");
        return m.Success ? double.Parse(m.Value, NumberStyles.Float, CultureInfo.InvariantCulture) : double.NaN;
    }

    /// <summary>The characters JavaScript's trim() and regex \s treat as white space.</summary>
    public static bool IsWhiteSpace(char c) => c switch
    {
        '\t' or '\n' or '\v' or '\f' or '\r' or ' ' or '\u00a0' or '\u1680' or '\u2028' or '\u2029' or '\u202f' or '\u205f' or '\u3000' or '\ufeff' => true,
        >= '\u2000' and <= '\u200a' => true,
        _ => false,
    };

    public static string Trim(string s) => TrimEnd(TrimStart(s));
    public static string TrimStart(string s) { int i = 0; while (i < s.Length && IsWhiteSpace(s[i])) i++; return s[i..]; }
    public static string TrimEnd(string s) { int i = s.Length; while (i > 0 && IsWhiteSpace(s[i - 1])) i--; return s[..i]; }

    /// <summary>toUpperCase: full case mapping (ß → SS), which .NET's simple mapping lacks.</summary>
    public static string ToUpper(string s)
    {
        if (!NeedsSpecialUpper(s)) return s.ToUpperInvariant();
        var sb = new StringBuilder(s.Length + 8);
        foreach (var cp in CodePoints(s))
            sb.Append(cp.Length == 1 && SpecialUpper.TryGetValue(cp[0], out var u) ? u : cp.ToUpperInvariant());
        return sb.ToString();
    }

    static bool NeedsSpecialUpper(string s) { foreach (var c in s) if (SpecialUpper.ContainsKey(c)) return true; return false; }

    static readonly Dictionary<char, string> SpecialUpper = new()
    {
        ['ß'] = "SS", ['ŉ'] = "ʼN", ['ǰ'] = "J̌", ['ΐ'] = "Ϊ́", ['ΰ'] = "Ϋ́", ['և'] = "ԵՒ", ['ẖ'] = "H̱", ['ẗ'] = "T̈",
        ['ẘ'] = "W̊", ['ẙ'] = "Y̊", ['ẚ'] = "Aʾ", ['ﬀ'] = "FF", ['ﬁ'] = "FI", ['ﬂ'] = "FL", ['ﬃ'] = "FFI", ['ﬄ'] = "FFL",
        ['ﬅ'] = "ST", ['ﬆ'] = "ST", ['ﬓ'] = "ՄՆ", ['ﬔ'] = "ՄԵ", ['ﬕ'] = "ՄԻ", ['ﬖ'] = "ՎՆ", ['ﬗ'] = "ՄԽ",
    };

    /// <summary>toLowerCase: İ → i̇ and a final Σ → ς, beyond .NET's simple mapping.</summary>
    public static string ToLower(string s)
    {
        var lower = s.ToLowerInvariant();
        if (!s.Contains('İ') && !s.Contains('Σ')) return lower;
        var sb = new StringBuilder(s.Length + 4);
        for (int i = 0; i < s.Length; i++)
        {
            var c = s[i];
            if (c == 'İ') sb.Append("i\u0307");
            else if (c == 'Σ')
            {
                bool before = i > 0 && char.IsLetter(s[i - 1]);
                bool after = i + 1 < s.Length && char.IsLetter(s[i + 1]);
                sb.Append(before && !after ? 'ς' : 'σ');
            }
            else sb.Append(lower[i]);
        }
        return sb.ToString();
    }

    /// <summary>Array.from(string): the string's code points (surrogate pairs stay together).</summary>
    public static List<string> CodePoints(string s)
    {
        var list = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { list.Add(s.Substring(i, 2)); i++; }
            else list.Add(s[i].ToString());
        }
        return list;
    }
}

record JsonOptions(double? Indent = null, bool EnsureAscii = false, (string Item, string Key)? Separators = null, bool SortKeys = false);

/// <summary>The tojson filter: JSON.stringify's escaping with Python json.dumps' default separators.</summary>
static class Json
{
    public static string Serialize(Value input, JsonOptions o, int depth, bool undefinedAsNull = true)
    {
        string itemSep, keySep;
        bool indenting = o.Indent is { } ind && ind != 0 && !double.IsNaN(ind);
        if (o.Separators is { } s) (itemSep, keySep) = s;
        else if (indenting) (itemSep, keySep) = (",", ": ");
        else (itemSep, keySep) = (", ", ": ");

        switch (input)
        {
            case NullValue: return "null";
            case UndefinedValue: return undefinedAsNull ? "null" : "undefined";
            case IntValue i: return double.IsFinite(i.V) ? Js.NumberToString(i.V) : "null";
            case FloatValue f: return double.IsFinite(f.V) ? Js.NumberToString(f.V) : "null";
            case BoolValue b: return b.V ? "true" : "false";
            case StrValue str: { var r = Quote(str.V); return o.EnsureAscii ? AsciiSafe(r) : r; }
            // As in the renderer, tuples are not serializable (its switch lacks them).
            case ArrayValue or ObjValue or NamespaceValue when input is not TupleValue:
            {
                var indentValue = indenting ? new string(' ', Math.Max(0, (int)o.Indent!.Value)) : "";
                var basePadding = "\n" + string.Concat(Enumerable.Repeat(indentValue, depth));
                var childPadding = basePadding + indentValue;
                if (input is ArrayValue a)
                {
                    var core = a.Items.Select(x => Serialize(x, o, depth + 1, undefinedAsNull)).ToList();
                    return indenting && core.Count > 0
                        ? "[" + childPadding + string.Join(itemSep + childPadding, core) + basePadding + "]"
                        : "[" + string.Join(itemSep, core) + "]";
                }
                var map = input is ObjValue ov ? ov.Map : ((NamespaceValue)input).Map;
                IEnumerable<KeyValuePair<string, Value>> entries = map;
                if (o.SortKeys) entries = entries.OrderBy(kv => kv.Key, LocaleComparer.Instance);
                var parts = entries.Select(kv =>
                {
                    var key = Quote(kv.Key);
                    if (o.EnsureAscii) key = AsciiSafe(key);
                    var v = key + keySep + Serialize(kv.Value, o, depth + 1, undefinedAsNull);
                    return indenting ? childPadding + v : v;
                }).ToList();
                return indenting && parts.Count > 0
                    ? "{" + string.Join(itemSep, parts) + basePadding + "}"
                    : "{" + string.Join(itemSep, parts) + "}";
            }
            default:
                throw new TemplateRuntimeError($"Cannot convert to JSON: {input.TypeName}");
        }
    }

    /// <summary>JSON.stringify of a string: only quotes, backslashes, control characters and lone surrogates escaped.</summary>
    public static string Quote(string s)
    {
        var sb = new StringBuilder(s.Length + 2).Append('"');
        for (int i = 0; i < s.Length; i++)
        {
            var c = s[i];
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4"));
                    else if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { sb.Append(c).Append(s[i + 1]); i++; }
                    else if (char.IsSurrogate(c)) sb.Append("\\u").Append(((int)c).ToString("x4"));
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }

    static string AsciiSafe(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var c in s)
            if (c >= 0x7f) sb.Append("\\u").Append(((int)c).ToString("x4"));
            else sb.Append(c);
        return sb.ToString();
    }

    /// <summary>
    /// An approximation of String.prototype.localeCompare (ICU root collation), which the renderer uses for sort_keys:
    /// punctuation before digits before letters, letters case-insensitive first, lower case before upper case on ties.
    /// </summary>
    sealed class LocaleComparer : IComparer<string>
    {
        public static readonly LocaleComparer Instance = new();
        const string Punctuation = " _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$";

        static int Primary(char c) =>
            char.IsAsciiDigit(c) ? 0x10000 + c
            : char.IsLetter(c) ? 0x20000 + char.ToLowerInvariant(c)
            : Punctuation.IndexOf(c) is >= 0 and var i ? i
            : 0x100 + c;

        public int Compare(string? x, string? y)
        {
            for (int i = 0; i < Math.Min(x!.Length, y!.Length); i++)
                if (Primary(x[i]) != Primary(y[i])) return Primary(x[i]).CompareTo(Primary(y[i]));
            if (x.Length != y.Length) return x.Length.CompareTo(y.Length);
            for (int i = 0; i < x.Length; i++)
                if (x[i] != y[i]) return char.IsLower(x[i]) ? -1 : 1;
            return 0;
        }
    }
}

/// <summary>Converts dataset JSON into runtime values as JSON.parse plus the renderer's conversion would.</summary>
static class JsonInput
{
    public static Value Convert(JsonNode? node)
    {
        switch (node)
        {
            case null: return NullValue.Instance;
            case JsonArray a: return new ArrayValue(a.Select(Convert).ToList());
            case JsonObject o:
            {
                var map = new OrderedDictionary<string, Value>(o.Count);
                bool indexKeys = false;
                foreach (var kv in o) indexKeys |= IsArrayIndex(kv.Key);
                // JavaScript objects list integer-like keys first, in numeric order, then the rest in insertion order.
                if (indexKeys)
                    foreach (var kv in o.Where(kv => IsArrayIndex(kv.Key)).OrderBy(kv => uint.Parse(kv.Key, CultureInfo.InvariantCulture)))
                        map[kv.Key] = Convert(kv.Value);
                foreach (var kv in o)
                    if (!indexKeys || !IsArrayIndex(kv.Key)) map[kv.Key] = Convert(kv.Value);
                return new ObjValue(map);
            }
            default:
                var value = node.AsValue();
                if (value.TryGetValue<JsonElement>(out var element)) return Convert(element);
                if (value.TryGetValue<string>(out var str)) return new StrValue(str);
                if (value.TryGetValue<bool>(out var b)) return b ? BoolValue.True : BoolValue.False;
                using (var doc = JsonDocument.Parse(value.ToJsonString())) return Convert(doc.RootElement);
        }
    }

    static Value Convert(JsonElement element)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.String: return new StrValue(element.GetString()!);
            case JsonValueKind.True: return BoolValue.True;
            case JsonValueKind.False: return BoolValue.False;
            case JsonValueKind.Null: return NullValue.Instance;
            case JsonValueKind.Number:
                // JSON.parse: the nearest double; integral values become integers, as the renderer's Number.isInteger decides.
                var d = double.Parse(element.GetRawText(), NumberStyles.Float, CultureInfo.InvariantCulture);
                return double.IsFinite(d) && d % 1 == 0 ? new IntValue(d) : new FloatValue(d);
            case JsonValueKind.Array: return new ArrayValue(element.EnumerateArray().Select(Convert).ToList());
            case JsonValueKind.Object: return Convert(JsonNode.Parse(element.GetRawText()));
            default: throw new ArgumentException($"Unsupported JSON value {element.GetRawText()}");
        }
    }

    static bool IsArrayIndex(string key) =>
        key.Length > 0 && key.Length <= 10 && key.All(char.IsAsciiDigit) && (key == "0" || key[0] != '0')
        && ulong.Parse(key, CultureInfo.InvariantCulture) < uint.MaxValue;
}
