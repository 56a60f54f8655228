using System.Reflection;
using System.Text.Json;

namespace Axolotl.Templates;

/// <summary>
/// Resolves Axolotl's <c>chat_template</c> choice (with <c>chat_template_jinja</c>) to a template, as Axolotl's
/// get_chat_template does: <c>tokenizer_default</c>, <c>tokenizer_default_fallback_&lt;name&gt;</c>, a bundled
/// template name, or <c>jinja</c>.
/// </summary>
internal static class ChatTemplates
{
    const string Jinja = "jinja", TokenizerDefault = "tokenizer_default", FallbackPrefix = "tokenizer_default_fallback_";

    // Axolotl 0.18's other bundled templates: named so that choosing one says what to do instead of "not found".
    static readonly string[] AxolotlOnly =
    [
        "aya", "cohere", "command_a", "command_a_rag", "command_a_tool_use", "deepseek_v2", "deepseek_v3", "exaone",
        "exaone4", "falcon_h1", "gemma3n", "gemma4", "gemma4_unified", "granite", "granitemoe", "jamba",
        "llama3_2_vision", "llama4", "llava", "metharme", "mistral_v3_tekken", "mistral_v7_tekken", "nemotron",
        "nemotron_h", "phi_4", "pixtral", "qwen2_vl", "qwen3_5",
    ];

    static readonly Lazy<Dictionary<string, string>> Bundled = new(() =>
    {
        var assembly = typeof(ChatTemplates).Assembly;
        const string prefix = "Axolotl.Templates.Bundled.";
        var result = new Dictionary<string, string>();
        foreach (var resource in assembly.GetManifestResourceNames().Where(r => r.StartsWith(prefix) && r.EndsWith(".jinja")))
        {
            using var stream = assembly.GetManifestResourceStream(resource)!;
            using var reader = new StreamReader(stream);
            result[resource[prefix.Length..^".jinja".Length]] = reader.ReadToEnd();
        }
        return result;
    });

    /// <summary>The names of the templates that ship with this library (Axolotl's own templates).</summary>
    public static IReadOnlyList<string> BundledNames => Bundled.Value.Keys.Order().ToList();

    /// <summary>The source of a bundled template, or null.</summary>
    public static string? BundledSource(string name) => Bundled.Value.GetValueOrDefault(name);

    /// <summary>
    /// The template for a <c>chat_template</c> choice. <paramref name="choice"/> null or empty means tokenizer_default, as in
    /// Axolotl. <paramref name="jinja"/> is chat_template_jinja: a file path or the template text.
    /// <paramref name="tokenizerFolder"/> is where tokenizer_default looks (chat_template.jinja, chat_template.json or
    /// tokenizer_config.json). <paramref name="warn"/> receives the fallback warning Axolotl logs.
    /// </summary>
    public static JinjaChatTemplate Resolve(string? choice, string? jinja, string? tokenizerFolder, SpecialTokens tokens,
        Action<string>? warn = null)
    {
        choice = string.IsNullOrEmpty(choice) ? TokenizerDefault : choice;
        if (choice == Jinja)
        {
            if (string.IsNullOrEmpty(jinja))
                throw new UserError("chat_template: jinja needs chat_template_jinja (the template text, or the path of a .jinja file).");
            return File.Exists(jinja)
                ? new JinjaChatTemplate(File.ReadAllText(jinja), jinja, tokens)
                : new JinjaChatTemplate(jinja, "chat_template_jinja", tokens);
        }
        if (choice == TokenizerDefault)
        {
            return FromTokenizer(tokenizerFolder, tokens) ?? throw new UserError(
                $"chat_template: tokenizer_default, but the tokenizer{(tokenizerFolder is null ? "" : $" in {tokenizerFolder}")} has no chat_template; " +
                "set chat_template to a template name (e.g. chatml) or to jinja with chat_template_jinja.");
        }
        if (choice.StartsWith(FallbackPrefix, StringComparison.Ordinal))
        {
            if (FromTokenizer(tokenizerFolder, tokens) is { } fromTokenizer) return fromTokenizer;
            choice = choice[FallbackPrefix.Length..];
            warn?.Invoke($"No chat template found on tokenizer, falling back to {choice}. It is recommended to set " +
                         "--train_on_inputs to True for the model to learn this chat template.");
        }
        if (Bundled.Value.TryGetValue(choice, out var source)) return new JinjaChatTemplate(source, choice, tokens);
        if (AxolotlOnly.Contains(choice))
            throw new UserError($"chat_template: {choice} is one of Axolotl's templates that is not bundled here yet; " +
                                $"use chat_template: jinja with chat_template_jinja set to its .jinja file, or one of {string.Join(", ", BundledNames)}.");
        throw new UserError($"chat_template: template '{choice}' not found; choose tokenizer_default, " +
                            $"tokenizer_default_fallback_<name>, jinja, or one of {string.Join(", ", BundledNames)}.");
    }

    /// <summary>
    /// The tokenizer's own template, as transformers loads it: chat_template.jinja, else chat_template.json, else
    /// tokenizer_config.json's chat_template (a string, or a list of named templates: "default", and "tool_use" when
    /// tools are given, as transformers chooses).
    /// </summary>
    public static JinjaChatTemplate? FromTokenizer(string? tokenizerFolder, SpecialTokens tokens)
    {
        if (tokenizerFolder is null || !Directory.Exists(tokenizerFolder)) return null;
        var jinjaFile = Path.Combine(tokenizerFolder, "chat_template.jinja");
        if (File.Exists(jinjaFile)) return new JinjaChatTemplate(File.ReadAllText(jinjaFile), jinjaFile, tokens);
        foreach (var file in new[] { "chat_template.json", "tokenizer_config.json" }.Select(f => Path.Combine(tokenizerFolder, f)))
        {
            if (!File.Exists(file)) continue;
            JsonDocument doc;
            try { doc = JsonDocument.Parse(File.ReadAllText(file)); }
            catch (JsonException e) { throw new UserError($"{file} is not valid JSON: {e.Message}"); }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object
                    || !doc.RootElement.TryGetProperty("chat_template", out var template)) continue;
                switch (template.ValueKind)
                {
                    case JsonValueKind.String when template.GetString() is { Length: > 0 } text:
                        return new JinjaChatTemplate(text, $"{file} (chat_template)", tokens);
                    case JsonValueKind.Array:
                    {
                        var named = template.EnumerateArray()
                            .Where(t => t.ValueKind == JsonValueKind.Object && t.TryGetProperty("name", out _) && t.TryGetProperty("template", out _))
                            .ToDictionary(t => t.GetProperty("name").GetString() ?? "", t => t.GetProperty("template").GetString() ?? "");
                        if (named.TryGetValue("default", out var text))
                            return new JinjaChatTemplate(text, $"{file} (chat_template default)", tokens)
                            {
                                ToolUseTemplate = named.TryGetValue("tool_use", out var toolUse)
                                    ? JinjaTemplate.Parse(toolUse, $"{file} (chat_template tool_use)") : null,
                            };
                        throw new UserError($"{file} lists chat templates ({string.Join(", ", named.Keys)}) but none named \"default\"; " +
                                            "set chat_template: jinja with chat_template_jinja to the one to use.");
                    }
                }
            }
        }
        return null;
    }
}
