using System.Text.Json.Nodes;

namespace Axolotl.Templates;

/// <summary>
/// Renders a conversation to prompt text as transformers' apply_chat_template does (tokenize=False). Messages are the
/// dataset's own JSON objects (role, content, tool_calls, ...), so fields the template reads pass through untouched.
/// The seam between the Jinja engine and the chat_template prompt strategy.
/// </summary>
internal interface IChatTemplate
{
    string Render(JsonArray messages, bool addGenerationPrompt = false, JsonArray? tools = null,
        JsonObject? extraVariables = null);
}
