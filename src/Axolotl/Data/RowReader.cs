using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.Config;

namespace Axolotl.Data;

/// <summary>A dataset row and where it came from, so a message about it can name the file and row.</summary>
internal sealed record Row(JsonObject Fields, string File, int Number, bool IsLine = false)
{
    public string Where => $"{File}, {(IsLine ? "line" : "row")} {Number}";
}

/// <summary>
/// Reads local datasets into rows as HF <c>datasets</c> loads them for Axolotl: json (an array, JSON Lines, or an object
/// holding the rows under <c>field</c>), csv, parquet, arrow (also folders written by <c>save_to_disk</c>) and text
/// files, folders of them, <c>data_files</c>, <c>split</c> (with slices such as <c>train[:100]</c>), <c>name</c>.
/// </summary>
internal static class RowReader
{
    public static IReadOnlyList<Row> Read(string path, string? dsType) => Read(new DatasetConfig { Path = path, DsType = dsType });

    public static IReadOnlyList<Row> Read(DatasetConfig dataset, BadRows? bad = null, string defaultSplit = "train")
    {
        bad ??= new BadRows(skip: false);
        var (split, slice) = ParseSplit(dataset.Split);
        var rows = Files(dataset, split, defaultSplit).SelectMany(f => ReadFile(f.Path, f.Type, dataset.Field, bad)).ToList();
        if (slice != null) rows = slice(rows);
        if (rows.Count == 0) throw new UserError($"dataset '{dataset.Path}' has no rows.");
        return rows;
    }

    /// <summary>
    /// The rows of <see cref="Read(DatasetConfig, BadRows?, string)"/>, one at a time as they are pulled: JSON Lines and
    /// text files line by line, Parquet row group by row group (other formats are read whole, file by file).
    /// </summary>
    public static IEnumerable<Row> Stream(DatasetConfig dataset, BadRows? bad = null)
    {
        bad ??= new BadRows(skip: false);
        var (split, slice) = ParseSplit(dataset.Split);
        if (slice != null)
            throw new UserError($"dataset '{dataset.Path}': split '{dataset.Split}' is a slice, which a stream cannot take; use 'skip' to leave out the first rows.");
        var files = Files(dataset, split, "train");
        return Rows();

        IEnumerable<Row> Rows()
        {
            bool any = false;
            foreach (var (path, type) in files)
                foreach (var row in StreamFile(path, type, dataset.Field, bad))
                {
                    any = true;
                    yield return row;
                }
            if (!any) throw new UserError($"dataset '{dataset.Path}' has no rows.");
        }
    }

    /// <summary>The files a dataset entry reads, in order, each with its ds_type (null: from the extension).</summary>
    static List<(string Path, string? Type)> Files(DatasetConfig dataset, string? split, string defaultSplit)
    {
        var path = dataset.Path;
        if (dataset.DataFiles is { Count: > 0 } dataFiles)
        {
            // Relative data_files sit in the dataset folder (a Hub snapshot), as HF resolves them against the repo.
            var root = Directory.Exists(path) ? path : "";
            var files = dataFiles.Select(f => Path.IsPathRooted(f) || root == "" ? f : Path.Combine(root, f)).ToList();
            foreach (var f in files)
                if (!File.Exists(f)) throw new UserError($"data_files: '{f}' does not exist.");
            CheckSplitOfFile(split, dataset);
            // Axolotl reads data_files without a local folder as json; with one, by ds_type or the path's extension.
            return files.Select(f => (f, dataset.DsType ?? (root == "" ? "json" : null))).ToList();
        }
        if (Directory.Exists(path))
        {
            if (dataset.Name is { Length: > 0 } name)
            {
                // A Hub dataset's configurations live in folders of that name (or name the files in the card's configs).
                var sub = Path.Combine(path, name);
                if (!Directory.Exists(sub)) throw new UserError($"dataset '{path}' has no configuration named '{name}' (no folder '{name}' in it).");
                path = sub;
            }
            return FolderFiles(path, dataset.DsType, split ?? defaultSplit);
        }
        if (File.Exists(path))
        {
            CheckSplitOfFile(split, dataset);
            return [(path, dataset.DsType)];
        }
        throw new UserError($"dataset path '{path}' does not exist.");
    }

    /// <summary>A single file is HF's "train" split; asking it for another is Axolotl's "no such split" error.</summary>
    static void CheckSplitOfFile(string? split, DatasetConfig d)
    {
        if (split is not (null or "train"))
            throw new UserError($"dataset '{d.Path}': a single file holds only the 'train' split, not '{split}'; remove 'split' or point 'path' at a folder with {split} files.");
    }

    /// <summary>"train", "train[:100]", "train[10:20]", "train[:10%]", "train[-5:]" as HF reads them.</summary>
    static (string? Split, Func<List<Row>, List<Row>>? Slice) ParseSplit(string? split)
    {
        if (string.IsNullOrEmpty(split)) return (null, null);
        int open = split.IndexOf('[');
        if (open < 0) return (split, null);
        if (!split.EndsWith(']')) throw new UserError($"split '{split}': a slice is written as name[start:end], e.g. train[:100] or train[:10%].");
        var name = split[..open];
        var parts = split[(open + 1)..^1].Split(':');
        if (parts.Length != 2) throw new UserError($"split '{split}': a slice is written as name[start:end], e.g. train[:100] or train[:10%].");
        return (name, rows =>
        {
            int Bound(string s, int fallback)
            {
                s = s.Trim();
                if (s == "") return fallback;
                bool percent = s.EndsWith('%');
                if (!int.TryParse(percent ? s[..^1] : s, out int v)) throw new UserError($"split '{split}': '{s}' is not a number.");
                if (percent) v = (int)Math.Round(v / 100.0 * rows.Count, MidpointRounding.ToEven);
                if (v < 0) v += rows.Count;
                return Math.Clamp(v, 0, rows.Count);
            }
            int start = Bound(parts[0], 0), end = Bound(parts[1], rows.Count);
            return end > start ? rows.GetRange(start, end - start) : [];
        });
    }

    static readonly Dictionary<string, string> Formats = new(StringComparer.OrdinalIgnoreCase)
    {
        [".json"] = "json", [".jsonl"] = "json", [".txt"] = "text", [".csv"] = "csv", [".parquet"] = "parquet", [".arrow"] = "arrow",
    };

    /// <summary>
    /// A folder: one written by <c>save_to_disk</c> (state.json, or dataset_dict.json over split folders), else its data
    /// files in sorted order, as HF's loader reads a local folder. When names carry split words only the wanted split's
    /// files count; README, LICENSE and dotfiles are not data.
    /// </summary>
    static List<(string Path, string? Type)> FolderFiles(string folder, string? dsType, string split)
    {
        if (File.Exists(Path.Combine(folder, "dataset_dict.json")))
        {
            var sub = Path.Combine(folder, split);
            if (!Directory.Exists(sub)) throw new UserError($"dataset '{folder}' (saved with save_to_disk) has no '{split}' split; set 'split' to one of its folders.");
            folder = sub;
        }
        if (File.Exists(Path.Combine(folder, "state.json")))
        {
            var state = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "state.json")));
            var arrows = state?["_data_files"]?.AsArray().Select(f => (string)f!["filename"]!).ToList() ?? [];
            if (arrows.Count == 0) throw new UserError($"dataset '{folder}': state.json lists no data files.");
            return arrows.Select(f => (Path.Combine(folder, f), (string?)"arrow")).ToList();
        }
        var files = DataCandidates(Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(folder, f).Replace('\\', '/')));
        if (files.Any(f => SplitWord(f) != null))
        {
            var wanted = files.Where(f => SplitWord(f) == split).ToList();
            if (wanted.Count == 0)
                throw new UserError($"dataset folder '{folder}' has no '{split}' files (its files name the splits {string.Join(", ", files.Select(SplitWord).Where(s => s != null).Distinct())}); set 'split'.");
            files = wanted;
        }
        else if (split != "train")
            throw new UserError($"dataset folder '{folder}' has no split named '{split}' (its file names carry no split words, so all of it is 'train').");
        var unreadable = files.Where(f => !Formats.ContainsKey(Path.GetExtension(f))).ToList();
        if (files.Count == 0 || unreadable.Count > 0)
            throw new UserError($"dataset folder '{folder}' " + (files.Count == 0 ? "holds no data files" :
                $"holds files that are not datasets: {string.Join(", ", unreadable.Take(5))}{(unreadable.Count > 5 ? $" and {unreadable.Count - 5} more" : "")} (.json, .jsonl, .csv, .parquet, .arrow and .txt are)") + ".");
        if (dsType == null && files.Select(f => Formats[Path.GetExtension(f)]).Distinct().Count() > 1)
            throw new UserError($"dataset folder '{folder}' mixes file formats ({string.Join(", ", files.Select(f => Path.GetExtension(f).ToLowerInvariant()).Distinct())}); set ds_type or keep one kind.");
        return files.Select(f => (Path.Combine(folder, f), dsType)).ToList();
    }

    /// <summary>
    /// The train data files among a folder's relative paths, sorted: what <see cref="Read"/> reads from a folder, and
    /// so what a Hub dataset download fetches.
    /// </summary>
    public static List<string> DataFiles(IEnumerable<string> relativePaths)
    {
        var files = DataCandidates(relativePaths);
        return files.Any(f => SplitWord(f) != null) ? files.Where(f => SplitWord(f) == "train").ToList() : files;
    }

    /// <summary>A folder's files that may hold data, sorted: no dotfiles or dot-folders, no README/LICENSE/markdown.</summary>
    static List<string> DataCandidates(IEnumerable<string> relativePaths) =>
        relativePaths.Where(f => !f.Split('/').Any(part => part.StartsWith('.')) && !IsDocument(Path.GetFileName(f)))
            .Order(StringComparer.Ordinal).ToList();

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
                case "test" or "testing" or "eval" or "evaluation": return "test";
                case "validation" or "valid" or "dev" or "val": return "validation";
            }
        return null;
    }

    static string FileType(string path, string? dsType) => dsType ?? (Formats.TryGetValue(Path.GetExtension(path), out var t) ? t
        : throw new UserError($"dataset '{path}': files of type '{Path.GetExtension(path)}' are not datasets (.json, .jsonl, .csv, .parquet, .arrow and .txt are); set ds_type if the extension is misleading."));

    static List<Row> ReadFile(string path, string? dsType, string? field, BadRows bad)
    {
        var type = FileType(path, dsType);
        try
        {
            return type switch
            {
                "json" => ReadJson(path, File.ReadAllText(path), field, bad),
                "text" => ReadText(path, File.ReadAllText(path)),
                "csv" => CsvReader.Read(path, File.ReadAllText(path)),
                "parquet" => ColumnarReader.ReadParquet(path),
                "arrow" => ColumnarReader.ReadArrow(path),
                _ => throw new UserError($"dataset '{path}': ds_type '{type}' is not one of json, csv, parquet, arrow, text."),
            };
        }
        catch (Exception e) when (e is not UserError && e is not OutOfMemoryException)
        {
            throw Unreadable(path, type, e);
        }
    }

    /// <summary>A file the user may not read is not a malformed one: the message says which it is.</summary>
    static UserError Unreadable(string path, string type, Exception e) =>
        new($"dataset '{path}': {(e is UnauthorizedAccessException ? "cannot be read" : $"not a readable {type} file")} ({e.Message.Split('\n')[0]}).", e);

    /// <summary>
    /// One file's rows as they are pulled. JSON Lines, text and Parquet never sit in memory whole; a JSON array, a
    /// JSON object with <c>field</c>, CSV and Arrow are read whole (their rows then go out one by one).
    /// </summary>
    static IEnumerable<Row> StreamFile(string path, string? dsType, string? field, BadRows bad)
    {
        var type = FileType(path, dsType);
        IEnumerable<Row> rows = type switch
        {
            "json" when !StartsLikeJsonLines(path, field) => ReadFile(path, type, field, bad),
            "json" => JsonLines(path, bad),
            "text" => Lines(path).Select((line, i) => new Row(new JsonObject { ["text"] = line.TrimEnd('\r') }, path, i + 1, IsLine: true)),
            "parquet" => ColumnarReader.StreamParquet(path),
            _ => ReadFile(path, type, field, bad),
        };
        using var e = rows.GetEnumerator();
        while (true)
        {
            try { if (!e.MoveNext()) yield break; }
            catch (Exception x) when (x is not UserError && x is not OutOfMemoryException)
            {
                throw Unreadable(path, type, x);
            }
            yield return e.Current;
        }
    }

    /// <summary>An array, or an object holding the rows under <c>field</c>, must be parsed whole; anything else is JSON Lines.</summary>
    static bool StartsLikeJsonLines(string path, string? field)
    {
        using var reader = new StreamReader(path);
        int c;
        while ((c = reader.Read()) >= 0 && char.IsWhiteSpace((char)c)) { }
        return !(c == '[' || (c == '{' && field != null));
    }

    /// <summary>The pieces between '\n's, as <see cref="ReadText"/> splits a whole file (no empty last piece).</summary>
    static IEnumerable<string> Lines(string path)
    {
        using var reader = new StreamReader(path);
        var line = new StringBuilder();
        int c;
        while ((c = reader.Read()) >= 0)
        {
            if (c != '\n') { line.Append((char)c); continue; }
            yield return line.ToString();
            line.Clear();
        }
        if (line.Length > 0) yield return line.ToString();
    }

    static IEnumerable<Row> JsonLines(string path, BadRows bad)
    {
        int lineNumber = 0;
        foreach (var line in Lines(path))
            if (ParseLine(path, line, ++lineNumber, bad) is { } row) yield return row;
    }

    static List<Row> ReadJson(string path, string text, string? field, BadRows bad)
    {
        var start = text.TrimStart();
        if (start.StartsWith('[')) return ReadArray(path, text);
        // One object holding the rows in a list under `field` (HF's json loader with field=...).
        if (start.StartsWith('{') && field != null && TryParse(text) is JsonObject whole && whole[field] is JsonArray inner)
            return ToRows(path, inner);
        return ReadLines(path, text, bad);
    }

    static JsonNode? TryParse(string text)
    {
        try { return JsonNode.Parse(text); }
        catch (JsonException) { return null; }
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
        return ToRows(path, array);
    }

    static List<Row> ToRows(string path, JsonArray array)
    {
        var rows = new List<Row>(array.Count);
        for (int i = 0; i < array.Count; i++)
        {
            var item = array[i] as JsonObject ?? throw new UserError($"{path}, row {i + 1}: expected a JSON object.");
            array[i] = null; // detach, so the row owns its object
            rows.Add(new Row(item, path, i + 1));
        }
        return rows;
    }

    static List<Row> ReadLines(string path, string text, BadRows bad)
    {
        var rows = new List<Row>();
        int lineNumber = 0;
        foreach (var line in text.Split('\n'))
            if (ParseLine(path, line, ++lineNumber, bad) is { } row) rows.Add(row);
        return rows;
    }

    static Row? ParseLine(string path, string line, int lineNumber, BadRows bad)
    {
        if (string.IsNullOrWhiteSpace(line)) return null;
        JsonNode? node;
        try { node = JsonNode.Parse(line, documentOptions: IO.JsonFiles.NoDuplicateKeys); }
        catch (JsonException e)
        {
            bad.Report("invalid JSON", $"{path}, line {lineNumber}: invalid JSON ({e.Message.Split('.')[0]}).");
            return null;
        }
        if (node is JsonObject obj) return new Row(obj, path, lineNumber, IsLine: true);
        bad.Report("not a JSON object", $"{path}, line {lineNumber}: expected a JSON object.");
        return null;
    }
}
