using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Axolotl.Config;

/// <summary>
/// The resolved config as YAML that <c>axolotl train</c> reads back (saved with every run and checkpoint, so a run can
/// be reproduced), and the JSON schema of the keys Axolotl.NET implements (<c>axolotl config-schema</c>).
/// </summary>
internal static class ConfigWriter
{
    public const string FileName = "axolotl_config.yml";

    static IEnumerable<PropertyInfo> Keys(Type type) => ConfigLoader.KeyProperties(type);

    /// <summary>Every implemented key with its resolved value (unset ones left out); paths stay as written, relative to the working directory, and Hub ids stay Hub ids.</summary>
    public static string ToYaml(AxolotlConfig config)
    {
        var yaml = new StringBuilder();
        yaml.AppendLine($"# Resolved by Axolotl.NET from {(config.SourcePath == "" ? "code" : config.SourcePath)}: defaults, derived values and command-line overrides applied.");
        foreach (var property in Keys(typeof(AxolotlConfig)))
        {
            var value = property.GetValue(config);
            if (value is null) continue;
            var key = ConfigLoader.KeyOf(property);
            if (config.AsWritten.TryGetValue(key, out var written)) value = written;
            if (key == "batch_size" || (key is "save_steps" or "eval_steps" && config.Sources.GetValueOrDefault(key)?.Contains("_per_epoch") == true))
            {
                // Derived from other keys; written as well it would contradict them on reading back.
                yaml.AppendLine($"# {key}: {Scalar(value)} ({(key == "batch_size" ? "micro_batch_size × gradient_accumulation_steps" : config.Sources[key])})");
                continue;
            }
            if (value is List<DatasetConfig> datasets)
            {
                yaml.AppendLine($"{key}:");
                foreach (var (dataset, index) in datasets.Select((d, i) => (d, i)))
                {
                    var fields = Keys(typeof(DatasetConfig)).Select(p => (Key: ConfigLoader.KeyOf(p), Value: p.GetValue(dataset))).Where(f => f.Value != null)
                        .Select(f => f.Key == "path" && config.AsWritten.TryGetValue($"{key}[{index}].path", out var hubId) ? (Key: f.Key, Value: (object?)hubId) : f).ToList();
                    if (dataset.UserDefined is { } format)
                        fields.Add(("type", typeof(UserDefinedFormat).GetProperties().ToDictionary(p => ConfigLoader.SnakeCase(p.Name), p => p.GetValue(format))));
                    for (int i = 0; i < fields.Count; i++)
                        yaml.AppendLine($"{(i == 0 ? "  - " : "    ")}{fields[i].Key}: {Scalar(fields[i].Value!)}");
                }
                continue;
            }
            yaml.AppendLine($"{key}: {Scalar(value)}");
        }
        return yaml.ToString();
    }

    /// <summary>A value in YAML flow form; strings as JSON strings, which YAML reads unchanged.</summary>
    static string Scalar(object value) => value switch
    {
        string s => JsonSerializer.Serialize(s),
        JsonNode node => node.ToJsonString(), // JSON is YAML flow style
        bool b => b ? "true" : "false",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        Enum e => ConfigLoader.Spelling(e),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        IDictionary map => "{" + string.Join(", ", map.Keys.Cast<object>().Select(k => $"{Scalar(k)}: {Scalar(map[k]!)}")) + "}",
        IEnumerable list => "[" + string.Join(", ", list.Cast<object>().Select(Scalar)) + "]",
        _ => JsonSerializer.Serialize(value.ToString()),
    };

    /// <summary>JSON Schema (2020-12) of the implemented keys, with Axolotl's defaults.</summary>
    public static JsonObject Schema()
    {
        var defaults = new AxolotlConfig();
        var properties = new JsonObject();
        foreach (var property in Keys(typeof(AxolotlConfig)))
            properties[ConfigLoader.KeyOf(property)] = property.PropertyType == typeof(List<DatasetConfig>)
                ? new JsonObject { ["type"] = "array", ["items"] = DatasetSchema(pretraining: property.Name == nameof(AxolotlConfig.PretrainingDataset)) }
                : Describe(property.PropertyType, property.GetValue(defaults));
        return new JsonObject
        {
            ["$schema"] = "https://json-schema.org/draft/2020-12/schema",
            ["title"] = "Axolotl.NET config",
            ["description"] = "The Axolotl keys Axolotl.NET implements. Other Axolotl keys are accepted when left empty, warned about when they only tune speed elsewhere, and otherwise refused by name.",
            ["type"] = "object",
            ["required"] = new JsonArray("base_model", "learning_rate"),
            ["properties"] = properties,
        };
    }

    /// <summary>A dataset entry; text_column and skip belong to pretraining_dataset entries only (refused elsewhere).</summary>
    static JsonObject DatasetSchema(bool pretraining)
    {
        var properties = new JsonObject();
        foreach (var property in Keys(typeof(DatasetConfig)))
            if (pretraining || !ConfigLoader.PretrainingOnlyKeys.Contains(ConfigLoader.KeyOf(property)))
                properties[ConfigLoader.KeyOf(property)] = Describe(property.PropertyType, null);
        return new JsonObject { ["type"] = "object", ["required"] = new JsonArray("path"), ["properties"] = properties };
    }

    static JsonObject Describe(Type type, object? defaultValue)
    {
        var underlying = Nullable.GetUnderlyingType(type) ?? type;
        if (typeof(IDictionary).IsAssignableFrom(underlying) || underlying == typeof(JsonObject)) return new JsonObject { ["type"] = "object" };
        var schema = new JsonObject
        {
            ["type"] = underlying == typeof(string) ? "string"
                : underlying == typeof(bool) ? "boolean"
                : underlying == typeof(int) ? "integer"
                : underlying == typeof(double) ? "number"
                : underlying == typeof(Dictionary<string, string>) ? "object"
                : typeof(IEnumerable).IsAssignableFrom(underlying) ? "array"
                : "string",
        };
        if (underlying.IsEnum)
        {
            schema["enum"] = new JsonArray([.. ConfigLoader.Spellings(underlying).Keys.Select(n => (JsonNode)n)]);
            if (defaultValue is Enum value) schema["default"] = ConfigLoader.Spelling(value);
            return schema;
        }
        if (underlying == typeof(List<string>) || underlying == typeof(List<int>))
            schema["items"] = new JsonObject { ["type"] = underlying == typeof(List<int>) ? "integer" : "string" };
        if (defaultValue is not null and not IEnumerable || defaultValue is string)
            schema["default"] = JsonSerializer.SerializeToNode(defaultValue);
        return schema;
    }
}
