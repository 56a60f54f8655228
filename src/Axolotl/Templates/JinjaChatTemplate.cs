using System.Text.Json.Nodes;
using Axolotl.Tokenization;

namespace Axolotl.Templates;

/// <summary>The special tokens a tokenizer gives chat templates as bos_token, eos_token, pad_token and unk_token.</summary>
internal sealed record SpecialTokens(string? BosToken = null, string? EosToken = null, string? PadToken = null, string? UnkToken = null)
{
    public static SpecialTokens From(Tokenizer tokenizer) =>
        new(tokenizer.BosToken, tokenizer.EosToken, tokenizer.PadToken, tokenizer.UnkToken);

    /// <summary>The variables transformers passes: only the tokens that are set (and not empty).</summary>
    public IEnumerable<KeyValuePair<string, string>> Variables()
    {
        if (!string.IsNullOrEmpty(BosToken)) yield return new("bos_token", BosToken);
        if (!string.IsNullOrEmpty(EosToken)) yield return new("eos_token", EosToken);
        if (!string.IsNullOrEmpty(UnkToken)) yield return new("unk_token", UnkToken);
        if (!string.IsNullOrEmpty(PadToken)) yield return new("pad_token", PadToken);
    }
}

/// <summary>
/// A chat template rendered as transformers' apply_chat_template(tokenize=False) renders it: the template sees
/// messages, tools and documents (none unless given), add_generation_prompt, the special tokens, then any extra
/// variables (which override the rest, as keyword arguments do).
/// </summary>
internal sealed class JinjaChatTemplate : IChatTemplate
{
    readonly SpecialTokens _tokens;
    readonly TimeProvider _clock;

    public JinjaChatTemplate(string source, string name, SpecialTokens? tokens = null, TimeProvider? clock = null)
        : this(JinjaTemplate.Parse(source, name), tokens, clock) { }

    public JinjaChatTemplate(JinjaTemplate template, SpecialTokens? tokens = null, TimeProvider? clock = null)
    {
        Template = template;
        _tokens = tokens ?? new SpecialTokens();
        _clock = clock ?? TimeProvider.System;
    }

    public JinjaTemplate Template { get; }

    /// <summary>
    /// Of a tokenizer's named templates, the one transformers picks instead when tools are given ("tool_use").
    /// </summary>
    public JinjaTemplate? ToolUseTemplate { get; init; }
    public string Name => Template.Name;
    public SpecialTokens Tokens => _tokens;

    public string Render(JsonArray messages, bool addGenerationPrompt = false, JsonArray? tools = null, JsonObject? extraVariables = null)
    {
        var variables = new Dictionary<string, JsonNode?>
        {
            ["messages"] = messages,
            ["tools"] = tools,
            ["documents"] = null,
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        foreach (var (key, value) in _tokens.Variables()) variables[key] = value;
        if (extraVariables is not null) foreach (var (key, value) in extraVariables) variables[key] = value;
        return (tools is not null && ToolUseTemplate is not null ? ToolUseTemplate : Template).Render(variables, _clock);
    }
}
