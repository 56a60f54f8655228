using System.Text.Json.Nodes;
using Axolotl.Templates;

namespace Axolotl.Tests.Templates;

/// <summary>
/// Every template in testdata/chat-templates/goldens, rendered with every conversation, must equal character for
/// character what @huggingface/jinja rendered (tools/chat-template-goldens/render.mjs), or fail where it failed.
/// AXOLOTL_EXTRA_GOLDENS (a folder) adds goldens made from templates that are not committed.
/// </summary>
public class ChatTemplateGoldenTests
{
    static IEnumerable<string> GoldenFiles()
    {
        var files = Directory.GetFiles(TestSetup.Data("chat-templates", "goldens"), "*.json").ToList();
        if (Environment.GetEnvironmentVariable("AXOLOTL_EXTRA_GOLDENS") is { Length: > 0 } extra && Directory.Exists(extra))
            files.AddRange(Directory.GetFiles(extra, "*.json"));
        return files.Order();
    }

    public static TheoryData<string> Goldens() => new(GoldenFiles());

    [Fact]
    public void GoldensCoverBundledTemplatesAndTokenizerTemplates()
    {
        var names = GoldenFiles().Select(Path.GetFileNameWithoutExtension).ToHashSet();
        foreach (var name in ChatTemplates.BundledNames) Assert.Contains($"bundled-{name}", names);
        Assert.Contains("tok-phi3", names);
        Assert.Contains("tok-tiny512", names);
    }

    [Theory]
    [MemberData(nameof(Goldens))]
    public void RendersAsHuggingFaceJinja(string goldenFile)
    {
        var golden = JsonNode.Parse(File.ReadAllText(goldenFile))!.AsObject();
        var conversations = JsonNode.Parse(File.ReadAllText(TestSetup.Data("chat-templates", "conversations.json")))!.AsArray()
            .ToDictionary(c => (string)c!["id"]!, c => c!.AsObject());
        var name = (string)golden["name"]!;
        if (golden["template"] is null)
        {
            CheckSnippets(golden);
            return;
        }
        // A bundled template is rendered from the file that ships (the golden's copy is what render.mjs read then):
        // an edit to Bundled/*.jinja that changes its output fails here until the goldens are made again.
        var source = name.StartsWith("bundled-")
            ? ChatTemplates.BundledSource(name["bundled-".Length..]) ?? throw new Xunit.Sdk.XunitException($"{name}: no bundled template of that name ships")
            : (string)golden["template"]!;
        if (golden["parse_error"] is not null)
        {
            Assert.Throws<ChatTemplateError>(() => JinjaTemplate.Parse(source, name));
            return;
        }
        var tokens = golden["special_tokens"]!.AsObject();
        var template = new JinjaChatTemplate(source, name, new SpecialTokens(
            (string?)tokens["bos_token"], (string?)tokens["eos_token"], (string?)tokens["pad_token"], (string?)tokens["unk_token"]), new FixedClock());
        var failures = new List<string>();
        var cases = golden["cases"]!.AsArray();
        Assert.NotEmpty(cases);
        foreach (var c in cases)
        {
            var conversation = conversations[(string)c!["conversation"]!];
            bool addGenerationPrompt = (bool)c["add_generation_prompt"]!;
            var label = $"{name} / {conversation["id"]} / add_generation_prompt={addGenerationPrompt}";
            string? actual = null, error = null;
            try
            {
                actual = template.Render(conversation["messages"]!.DeepClone().AsArray(), addGenerationPrompt,
                    conversation["tools"]?.DeepClone().AsArray(), conversation["extra"]?.DeepClone().AsObject());
            }
            catch (ChatTemplateError e) { error = e.Detail; }

            if (c["expected"] is { } expected)
            {
                if (actual != (string)expected!) failures.Add($"{label}: expected\n{Show((string)expected!)}\nbut got\n{Show(actual ?? "error: " + error)}");
            }
            else if (error is null) failures.Add($"{label}: expected the error \"{c["error"]}\" but rendered\n{Show(actual!)}");
            else if (error != (string)c["error"]!) failures.Add($"{label}: expected the error \"{c["error"]}\" but got \"{error}\"");
        }
        Assert.True(failures.Count == 0, string.Join("\n\n", failures));
    }

    // Each case: its own template and variables. An error must come from the same step as the JavaScript renderer's
    // (error_kind: parse or render); a syntax error's wording is the JavaScript parser's (line and column are tested
    // apart), so only a rendering error must carry the renderer's message.
    static void CheckSnippets(JsonObject golden)
    {
        var failures = new List<string>();
        foreach (var c in golden["cases"]!.AsArray())
        {
            var label = (string)c!["snippet"]!;
            string? actual = null, error = null;
            bool syntax = false;
            try
            {
                var template = JinjaTemplate.Parse((string)c["template"]!, label);
                try { actual = template.Render(c["context"]!.DeepClone().AsObject(), new FixedClock()); }
                catch (ChatTemplateError e) { error = e.Detail; }
            }
            catch (ChatTemplateError e) { error = e.Detail; syntax = true; }

            if (c["expected"] is { } expected)
            {
                if (actual != (string)expected!) failures.Add($"{label}: expected {Show((string)expected!)} but got {Show(actual ?? "error: " + error)}");
            }
            else if (error is null) failures.Add($"{label}: expected the error \"{c["error"]}\" but rendered {Show(actual!)}");
            else if (syntax != ((string)c["error_kind"]! == "parse"))
                failures.Add($"{label}: expected a {c["error_kind"]} error (\"{c["error"]}\") but got a {(syntax ? "parse" : "render")} error \"{error}\"");
            else if (!syntax && error != (string)c["error"]!) failures.Add($"{label}: expected the error \"{c["error"]}\" but got \"{error}\"");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>The instant render.mjs fixes the renderer's clock to.</summary>
    internal sealed class FixedClock : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => new(2024, 7, 26, 9, 5, 0, TimeSpan.Zero);
        public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;
    }

    static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
