using System.Text.Json.Nodes;
using Axolotl.Templates.Jinja;

namespace Axolotl.Templates;

/// <summary>
/// A Jinja template as Hugging Face renders chat templates: the semantics of @huggingface/jinja (the renderer of
/// transformers.js), with trim_blocks and lstrip_blocks on as transformers sets them. Parsed once; Render is thread-safe.
/// </summary>
internal sealed class JinjaTemplate
{
    readonly ProgramNode _program;

    JinjaTemplate(string name, string source, ProgramNode program) { Name = name; Source = source; _program = program; }

    /// <summary>The name errors refer to (a template name or a file).</summary>
    public string Name { get; }
    public string Source { get; }

    /// <exception cref="ChatTemplateError">The template has a syntax error (the message names line and column).</exception>
    public static JinjaTemplate Parse(string source, string name)
    {
        try
        {
            return new JinjaTemplate(name, source, Parser.Parse(source));
        }
        catch (TemplateSyntaxError e)
        {
            var (line, column) = LineColumn(source, e.Pos);
            throw new ChatTemplateError(name, line, column, e.Message, raised: false,
                $"Chat template {name}: syntax error at line {line}, column {column}: {e.Message}");
        }
    }

    /// <summary>Renders with the given variables (JSON values, converted as JSON.parse would give them to the renderer).</summary>
    /// <exception cref="ChatTemplateError">The template raised an error (raise_exception) or failed on the data.</exception>
    public string Render(IEnumerable<KeyValuePair<string, JsonNode?>> variables, TimeProvider? clock = null)
    {
        var interpreter = new Interpreter(clock ?? TimeProvider.System);
        try
        {
            var env = interpreter.Globals(variables.Select(kv => KeyValuePair.Create(kv.Key, JsonInput.Convert(kv.Value))));
            return interpreter.Run(_program, env);
        }
        catch (TemplateRuntimeError e)
        {
            var (line, column) = LineColumn(Source, Math.Max(e.Pos, 0));
            var text = e.Raised
                ? $"Chat template {Name} (line {line}) raised: {e.Message}"
                : $"Chat template {Name}, line {line}, column {column}: {e.Message}";
            throw new ChatTemplateError(Name, line, column, e.Message, e.Raised, text);
        }
        catch (Exception e) when (e is BreakSignal or ContinueSignal)
        {
            throw new ChatTemplateError(Name, 1, 1, "break or continue outside a loop", false,
                $"Chat template {Name}: break or continue outside a loop.");
        }
    }

    static (int Line, int Column) LineColumn(string source, int pos)
    {
        pos = Math.Clamp(pos, 0, source.Length);
        int line = 1, lineStart = 0;
        for (int i = 0; i < pos; i++)
            if (source[i] == '\n') { line++; lineStart = i + 1; }
        return (line, pos - lineStart + 1);
    }
}

/// <summary>A chat template that failed to parse or to render; <see cref="Detail"/> is the renderer's own message.</summary>
internal sealed class ChatTemplateError : UserError
{
    internal ChatTemplateError(string template, int line, int column, string detail, bool raised, string message) : base(message)
    {
        TemplateName = template;
        Line = line;
        Column = column;
        Detail = detail;
        RaisedByTemplate = raised;
    }

    public string TemplateName { get; }
    public int Line { get; }
    public int Column { get; }
    /// <summary>The message alone: the template's raise_exception text, or what went wrong.</summary>
    public string Detail { get; }
    /// <summary>True when the template rejected the conversation itself (raise_exception).</summary>
    public bool RaisedByTemplate { get; }
}
