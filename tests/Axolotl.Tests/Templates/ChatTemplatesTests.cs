using System.Text.Json.Nodes;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Templates;

public class ChatTemplatesTests
{
    static readonly SpecialTokens Tokens = new("<s>", "</s>");
    static JsonArray Chat() => new(
        new JsonObject { ["role"] = "user", ["content"] = "Hi" },
        new JsonObject { ["role"] = "assistant", ["content"] = "Hello" });

    [Fact]
    public void BundlesTheTemplatesAxolotlNames()
    {
        foreach (var name in new[] { "alpaca", "chatml", "gemma", "gemma3", "llama3", "mistral_v1", "mistral_v2v3", "phi_3", "phi_35", "qwen_25" })
        {
            var template = ChatTemplates.Resolve(name, null, null, Tokens);
            Assert.Equal(name, template.Name);
            Assert.False(string.IsNullOrEmpty(ChatTemplates.BundledSource(name)));
        }
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
            ChatTemplates.Resolve("chatml", null, null, Tokens).Render(Chat()));
    }

    [Fact]
    public void TokenizerDefaultReadsTokenizerConfig()
    {
        var folder = TestSetup.Data("tok-phi3");
        var expected = (string)JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "tokenizer_config.json")))!["chat_template"]!;
        var tokens = SpecialTokens.From(Tokenizer.FromFolder(folder));
        Assert.Equal(new SpecialTokens("<s>", "<|endoftext|>", "<|endoftext|>", "<unk>"), tokens);
        foreach (var choice in new[] { null, "", "tokenizer_default", "tokenizer_default_fallback_chatml" })
        {
            var warnings = new List<string>();
            var template = ChatTemplates.Resolve(choice, null, folder, tokens, warnings.Add);
            Assert.Equal(expected, template.Template.Source);
            Assert.Empty(warnings);
            // Phi-3's template closes with eos_token when no generation prompt is asked for.
            Assert.Equal("<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>", template.Render(Chat()));
        }
    }

    [Fact]
    public void TokenizerDefaultWithoutTemplateIsAnError()
    {
        var folder = TestSetup.Data("tok-gpt2");
        var e = Assert.Throws<UserError>(() => ChatTemplates.Resolve("tokenizer_default", null, folder, Tokens));
        Assert.Contains("tokenizer_default", e.Message);
        Assert.Contains(folder, e.Message);
    }

    [Fact]
    public void FallbackUsesTheNamedTemplateAndWarns()
    {
        var warnings = new List<string>();
        var template = ChatTemplates.Resolve("tokenizer_default_fallback_chatml", null, TestSetup.Data("tok-gpt2"), Tokens, warnings.Add);
        Assert.Equal("chatml", template.Name);
        Assert.Single(warnings);
        Assert.Contains("falling back to chatml", warnings[0]);
    }

    [Fact]
    public void JinjaTakesTextOrAFile()
    {
        var inline = ChatTemplates.Resolve("jinja", "{% for m in messages %}[{{ m.role }}]{% endfor %}{{ eos_token }}", null, Tokens);
        Assert.Equal("[user][assistant]</s>", inline.Render(Chat()));

        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["t.jinja"], "{{ bos_token }}{{ messages | length }}\n");
        var fromFile = ChatTemplates.Resolve("jinja", dir["t.jinja"], null, Tokens);
        Assert.Equal(dir["t.jinja"], fromFile.Name);
        Assert.Equal("<s>2", fromFile.Render(Chat()));

        var e = Assert.Throws<UserError>(() => ChatTemplates.Resolve("jinja", null, null, Tokens));
        Assert.Contains("chat_template_jinja", e.Message);
    }

    [Fact]
    public void UnknownNamesAreRefusedByName()
    {
        var unknown = Assert.Throws<UserError>(() => ChatTemplates.Resolve("chatmll", null, null, Tokens));
        Assert.Contains("'chatmll' not found", unknown.Message);
        Assert.Contains("chatml", unknown.Message);
        var notBundled = Assert.Throws<UserError>(() => ChatTemplates.Resolve("qwen3_5", null, null, Tokens));
        Assert.Contains("qwen3_5", notBundled.Message);
        Assert.Contains("chat_template_jinja", notBundled.Message);
    }

    [Fact]
    public void NamedTemplateListsUseDefaultAndTemplateFilesWin()
    {
        using var dir = TestSetup.TempDir();
        var config = new JsonObject
        {
            ["chat_template"] = new JsonArray(
                new JsonObject { ["name"] = "tool_use", ["template"] = "tools" },
                new JsonObject { ["name"] = "default", ["template"] = "default:{{ messages | length }}" }),
        };
        File.WriteAllText(dir["tokenizer_config.json"], config.ToJsonString());
        var resolved = ChatTemplates.Resolve("tokenizer_default", null, dir.Path, Tokens);
        Assert.Equal("default:2", resolved.Render(Chat()));
        Assert.Equal("tools", resolved.Render(Chat(), tools: new JsonArray()));

        File.WriteAllText(dir["chat_template.jinja"], "from file");
        Assert.Equal("from file", ChatTemplates.Resolve("tokenizer_default", null, dir.Path, Tokens).Render(Chat()));

        File.Delete(dir["chat_template.jinja"]);
        config["chat_template"]!.AsArray().RemoveAt(1);
        config["chat_template"]!.AsArray().Add(new JsonObject { ["name"] = "other", ["template"] = "x" });
        File.WriteAllText(dir["tokenizer_config.json"], config.ToJsonString());
        var e = Assert.Throws<UserError>(() => ChatTemplates.Resolve("tokenizer_default", null, dir.Path, Tokens));
        Assert.Contains("default", e.Message);
    }
}
