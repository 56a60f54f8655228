using System.Text.Json;
using System.Text.Json.Nodes;

namespace Axolotl.IO;

internal static class JsonFiles
{
    /// <summary>
    /// Parsing options for user files: a key given twice is an error at parse time, where the line is known, rather
    /// than an exception on first access (System.Text.Json's JsonObject refuses duplicates only then).
    /// </summary>
    public static readonly JsonDocumentOptions NoDuplicateKeys = new() { AllowDuplicateProperties = false };

    /// <summary>Reads a JSON object from a file; a missing or malformed file is a <see cref="UserError"/> naming it.</summary>
    public static JsonObject ReadObject(string path)
    {
        if (!File.Exists(path)) throw new UserError($"{path}: file not found.");
        try
        {
            return JsonNode.Parse(File.ReadAllText(path), documentOptions: NoDuplicateKeys) as JsonObject ?? throw new UserError($"{path}: expected a JSON object.");
        }
        catch (JsonException e) { throw new UserError($"{path}: invalid JSON at line {e.LineNumber + 1} ({e.Message.Split('.')[0]})."); }
    }
}
