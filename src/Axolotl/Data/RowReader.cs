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
        if (Directory.Exists(path)) return ReadFolder(path, dsType);
        if (!File.Exists(path))
            throw new UserError($"dataset path '{path}' does not exist.");
        var rows = ReadFile(path, dsType);
        if (rows.Count == 0) throw new UserError($"dataset '{path}' has no rows.");
        return rows;
    }

    static readonly string[] Readable = [".json", ".jsonl", ".txt"];

    /// <summary>
    /// A folder (a Hub dataset snapshot, say) whose data files are all .json/.jsonl/.txt, read in sorted order. When
    /// names carry split words, as HF's loader reads them, only the train files count; README, LICENSE and dotfiles are
    /// not data.
    /// </summary>
    static List<Row> ReadFolder(string folder, string? dsType)
    {
        var files = DataFiles(Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(folder, f).Replace('\\', '/')));
        var unreadable = files.Where(f => !Readable.Contains(Path.GetExtension(f).ToLowerInvariant())).ToList();
        if (files.Count == 0 || unreadable.Count > 0)
            throw new UserError($"dataset folder '{folder}' " + (files.Count == 0 ? "holds no data files" :
                $"holds files that are not read yet: {string.Join(", ", unreadable.Take(5))}{(unreadable.Count > 5 ? $" and {unreadable.Count - 5} more" : "")} (.json, .jsonl and .txt are)") + ".");
        if (dsType == null && files.Select(f => Path.GetExtension(f).ToLowerInvariant() == ".txt").Distinct().Count() > 1)
            throw new UserError($"dataset folder '{folder}' mixes .txt with .json/.jsonl files; set ds_type or keep one kind.");
        var rows = files.SelectMany(f => ReadFile(Path.Combine(folder, f), dsType)).ToList();
        if (rows.Count == 0) throw new UserError($"dataset folder '{folder}' has no rows.");
        return rows;
    }

    /// <summary>
    /// The train data files among a folder's relative paths, sorted: what <see cref="Read"/> reads from a folder, and
    /// so what a Hub dataset download fetches.
    /// </summary>
    public static List<string> DataFiles(IEnumerable<string> relativePaths)
    {
        var files = relativePaths.Where(f => !f.Split('/').Any(part => part.StartsWith('.')) && !IsDocument(Path.GetFileName(f)))
            .Order(StringComparer.Ordinal).ToList();
        return files.Any(f => SplitWord(f) != null) ? files.Where(f => SplitWord(f) == "train").ToList() : files;
    }

    static bool IsDocument(string name) =>
        name.StartsWith("README", StringComparison.OrdinalIgnoreCase) || name.StartsWith("LICENSE", StringComparison.OrdinalIgnoreCase) ||
        name.EndsWith(".md", StringComparison.OrdinalIgnoreCase);

    /// <summary>The split a path names as HF's data-file patterns read it ("data/train-00000.jsonl"), or null.</summary>
    static string? SplitWord(string relative)
    {
        foreach (var part in relative.ToLowerInvariant().Split('/', '-', '_', '.', ' '))
            switch (part)
            {
                case "train" or "training": return "train";
                case "test" or "testing" or "eval" or "evaluation" or "validation" or "valid" or "dev": return part;
            }
        return null;
    }

    static List<Row> ReadFile(string path, string? dsType)
    {
        var type = dsType ?? Path.GetExtension(path).TrimStart('.').ToLowerInvariant() switch
        {
            "json" or "jsonl" => "json",
            "txt" => "text",
            var other => throw new UserError($"dataset '{path}': files of type '.{other}' are not read yet (.json and .jsonl are); set ds_type if the extension is misleading."),
        };
        if (type is not ("json" or "text")) throw new UserError($"dataset '{path}': ds_type '{type}' is not supported yet (json and text are).");
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new UserError($"dataset '{path}' cannot be read ({e.Message})."); }
        if (type == "text") return ReadText(path, text);
        return text.TrimStart().StartsWith('[') ? ReadArray(path, text) : ReadLines(path, text);
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
        try { array = JsonNode.Parse(text, documentOptions: IO.JsonFiles.NoDuplicateKeys) as JsonArray ?? throw new UserError($"{path}: expected a JSON array of objects."); }
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
                rows.Add(new Row(JsonNode.Parse(line, documentOptions: IO.JsonFiles.NoDuplicateKeys) as JsonObject ?? throw new UserError($"{path}, line {lineNumber}: expected a JSON object."), path, lineNumber, IsLine: true));
            }
            catch (JsonException e) { throw new UserError($"{path}, line {lineNumber}: invalid JSON ({e.Message.Split('.')[0]})."); }
        }
        return rows;
    }
}
