using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace Axolotl.Data;

/// <summary>
/// CSV as HF's csv loader (pandas.read_csv) reads it: RFC 4180 quoting, the first record is the header, a column whose
/// every value is an integer (or a number) becomes numbers, an empty field is null.
/// </summary>
static class CsvReader
{
    public static List<Row> Read(string path, string text)
    {
        var records = Parse(path, text);
        if (records.Count == 0) return [];
        var header = records[0].Fields;
        var body = records.Skip(1).Where(r => !(r.Fields.Count == 1 && r.Fields[0].Length == 0)).ToList();
        foreach (var r in body)
            if (r.Fields.Count != header.Count)
                throw new UserError($"{path}, line {r.Line}: {r.Fields.Count} fields where the header has {header.Count}.");
        var kinds = Enumerable.Range(0, header.Count).Select(c => ColumnKind(body.Select(r => r.Fields[c]))).ToArray();
        var rows = new List<Row>(body.Count);
        foreach (var r in body)
        {
            var obj = new JsonObject();
            for (int c = 0; c < header.Count; c++)
            {
                var v = r.Fields[c];
                obj[header[c]] = v.Length == 0 ? null : kinds[c] switch
                {
                    'i' => JsonValue.Create(long.Parse(v, CultureInfo.InvariantCulture)),
                    'f' => JsonValue.Create(double.Parse(v, CultureInfo.InvariantCulture)),
                    _ => JsonValue.Create(v),
                };
            }
            rows.Add(new Row(obj, path, r.Line, IsLine: true));
        }
        return rows;
    }

    static char ColumnKind(IEnumerable<string> values)
    {
        var present = values.Where(v => v.Length > 0).ToList();
        if (present.Count == 0) return 's';
        if (present.All(v => long.TryParse(v, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _))) return 'i';
        if (present.All(v => double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out _))) return 'f';
        return 's';
    }

    /// <summary>Records with the line each starts on; quoted fields may hold commas, doubled quotes and newlines.</summary>
    static List<(List<string> Fields, int Line)> Parse(string path, string text)
    {
        var records = new List<(List<string>, int)>();
        var fields = new List<string>();
        var field = new StringBuilder();
        int line = 1, start = 1, i = 0;
        bool quoted = false, any = false;
        while (i < text.Length)
        {
            char ch = text[i];
            if (quoted)
            {
                if (ch == '"')
                {
                    if (i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i += 2; continue; }
                    quoted = false;
                }
                else { if (ch == '\n') line++; field.Append(ch); }
                i++;
                continue;
            }
            switch (ch)
            {
                case '"' when field.Length == 0: quoted = true; any = true; break;
                case ',': fields.Add(field.ToString()); field.Clear(); any = true; break;
                case '\r' when i + 1 < text.Length && text[i + 1] == '\n': break;
                case '\n':
                    fields.Add(field.ToString()); field.Clear();
                    records.Add((fields, start));
                    fields = []; any = false; line++; start = line;
                    break;
                default: field.Append(ch); any = true; break;
            }
            i++;
        }
        if (quoted) throw new UserError($"{path}, line {start}: a quoted field is never closed.");
        if (any || field.Length > 0) { fields.Add(field.ToString()); records.Add((fields, start)); }
        return records;
    }
}
