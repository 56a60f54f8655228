using System.Text.Json;
using System.Text.Json.Nodes;

namespace Axolotl.Data;

/// <summary>A dataset row and where it came from, so a message about it can name the file and row.</summary>
public sealed record Row(JsonObject Fields, string File, int Number, bool IsLine = false)
{
    public string Where => $"{File}, {(IsLine ? "line" : "row")} {Number}";
}

/// <summary>Reads local dataset files into rows: a JSON array of objects or JSON Lines (what HF's json loader takes).</summary>
public static class RowReader
{
    public static IReadOnlyList<Row> Read(string path, string? dsType)
    {
        if (Directory.Exists(path))
            throw new UserError($"dataset path '{path}' is a folder; point it at a .json or .jsonl file (folders are not read yet).");
        if (!File.Exists(path))
            throw new UserError($"dataset path '{path}' does not exist (Hugging Face Hub dataset ids are not resolved yet; use a local file).");
        var type = dsType ?? Path.GetExtension(path).TrimStart('.').ToLowerInvariant() switch
        {
            "json" or "jsonl" => "json",
            "txt" => "text",
            var other => throw new UserError($"dataset '{path}': files of type '.{other}' are not read yet (.json and .jsonl are); set ds_type if the extension is misleading."),
        };
        if (type is not ("json" or "text")) throw new UserError($"dataset '{path}': ds_type '{type}' is not supported yet (json and text are).");
        var text = File.ReadAllText(path);
        if (type == "text") return ReadText(path, text);
        var rows = text.TrimStart().StartsWith('[') ? ReadArray(path, text) : ReadLines(path, text);
        if (rows.Count == 0) throw new UserError($"dataset '{path}' has no rows.");
        return rows;
    }

    /// <summary>HF's text loader: one row per line, in a column named "text".</summary>
    static List<Row> ReadText(string path, string text)
    {
        var lines = text.Split('\n');
        int count = lines.Length > 0 && lines[^1].Length == 0 ? lines.Length - 1 : lines.Length;
        var rows = new List<Row>(count);
        for (int i = 0; i < count; i++)
            rows.Add(new Row(new JsonObject { ["text"] = lines[i].TrimEnd('\r') }, path, i + 1, IsLine: true));
        return rows;
    }

    static List<Row> ReadArray(string path, string text)
    {
        JsonArray array;
        try { array = JsonNode.Parse(text) as JsonArray ?? throw new UserError($"{path}: expected a JSON array of objects."); }
        catch (JsonException e) { throw new UserError($"{path}: invalid JSON at line {e.LineNumber + 1}: {e.Message.Split('.')[0]}."); }
        var rows = new List<Row>(array.Count);
        for (int i = 0; i < array.Count; i++)
            rows.Add(new Row(array[i] as JsonObject ?? throw new UserError($"{path}, row {i + 1}: expected a JSON object."), path, i + 1));
        return rows;
    }

    static List<Row> ReadLines(string path, string text)
    {
        var rows = new List<Row>();
        int lineNumber = 0;
        foreach (var line in text.Split('\n'))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                rows.Add(new Row(JsonNode.Parse(line) as JsonObject ?? throw new UserError($"{path}, line {lineNumber}: expected a JSON object."), path, lineNumber, IsLine: true));
            }
            catch (JsonException e) { throw new UserError($"{path}, line {lineNumber}: invalid JSON ({e.Message.Split('.')[0]})."); }
        }
        return rows;
    }
}
