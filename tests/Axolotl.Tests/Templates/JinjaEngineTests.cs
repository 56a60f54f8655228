using System.Text.Json.Nodes;
using Axolotl.Templates;
using Axolotl.Templates.Jinja;

namespace Axolotl.Tests.Templates;

// Character-exact behaviour is checked against @huggingface/jinja by the golden tests (engine-snippets.json covers
// filters, loops, whitespace control, slicing, namespaces, macros and errors); these cover what goldens cannot:
// where errors point, the variables a chat template receives, and the JavaScript number formatting underneath.
public class JinjaEngineTests
{
    static string Render(string template, JsonObject? variables = null) =>
        JinjaTemplate.Parse(template, "test").Render(variables ?? new JsonObject());

    [Theory]
    [InlineData("Hello\n  {% foo %}", 2, 6)]
    [InlineData("{% if true %}\n    {{ 1 + }}\n{% endif %}", 2, 12)]
    [InlineData("a\nb\n{{ x ; y }}", 3, 6)]
    [InlineData("{% for m in messages %}\n{{ m.content }}\n", 3, 1)]
    public void SyntaxErrorsNameLineAndColumn(string template, int line, int column)
    {
        var e = Assert.Throws<ChatTemplateError>(() => JinjaTemplate.Parse(template, "my_template"));
        Assert.Equal((line, column), (e.Line, e.Column));
        Assert.Contains("my_template", e.Message);
        Assert.Contains($"line {line}, column {column}", e.Message);
        Assert.False(e.RaisedByTemplate);
    }

    [Fact]
    public void RaiseExceptionIsAUserErrorWithTheTemplatesMessageAndLine()
    {
        var template = JinjaTemplate.Parse("{% for m in messages %}\n  {% if m.role == 'tool' %}\n    {{ raise_exception('No tools: ' ~ m.content) }}\n  {% endif %}\n{% endfor %}", "strict");
        var variables = new JsonObject { ["messages"] = new JsonArray(new JsonObject { ["role"] = "tool", ["content"] = "x" }) };
        UserError e = Assert.Throws<ChatTemplateError>(() => template.Render(variables));
        var error = (ChatTemplateError)e;
        Assert.True(error.RaisedByTemplate);
        Assert.Equal("No tools: x", error.Detail);
        Assert.Equal(3, error.Line);
        Assert.Contains("strict", e.Message);
    }

    [Fact]
    public void RuntimeErrorsPointAtTheFailingExpression()
    {
        var e = Assert.Throws<ChatTemplateError>(() => Render("ok\n{{ 'a' + none }}"));
        Assert.Equal("Cannot perform operation on null values", e.Detail);
        Assert.Equal((2, 4), (e.Line, e.Column));
    }

    [Fact]
    public void RunawayRecursionIsAnErrorNotACrash()
    {
        var e = Assert.Throws<ChatTemplateError>(() => Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(0) }}"));
        Assert.Equal("Maximum call stack size exceeded", e.Detail);
        Assert.Throws<ChatTemplateError>(() => JinjaTemplate.Parse("{{ " + new string('(', 100_000) + "1" + new string(')', 100_000) + " }}", "deep"));
    }

    [Fact]
    public void ChatTemplateReceivesToolsDocumentsAndExtraVariables()
    {
        var template = new JinjaChatTemplate(
            "{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ bos_token }}|{{ pad_token is defined }}|{{ custom }}|{{ eos_token }}",
            "vars", new SpecialTokens("<s>", "</s>"));
        Assert.Equal("true|true|false|<s>|false||</s>", template.Render(new JsonArray()));
        Assert.Equal("false|true|true|<s>|false|x|EOS", template.Render(new JsonArray(), true,
            new JsonArray(new JsonObject { ["name"] = "f" }), new JsonObject { ["custom"] = "x", ["eos_token"] = "EOS" }));
    }

    [Fact]
    public void RenderingLeavesTheInputUntouchedAndCanRepeat()
    {
        var template = new JinjaChatTemplate("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{{ messages[0] | tojson }}", "t");
        var messages = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "é \"q\"", ["z"] = 1, ["a"] = 2.5 });
        var before = messages.ToJsonString();
        Assert.Equal("1{\"role\": \"user\", \"content\": \"é \\\"q\\\"\", \"z\": 1, \"a\": 2.5}", template.Render(messages));
        Assert.Equal(template.Render(messages), template.Render(messages));
        Assert.Equal(before, messages.ToJsonString());
    }

    [Fact]
    public void BuiltJsonValuesConvertAsParsedOnes()
    {
        var variables = new JsonObject
        {
            ["i"] = 5, ["l"] = 7L, ["f"] = 2.5, ["whole"] = 1.0, ["s"] = "x", ["b"] = true, ["n"] = null,
            ["o"] = new JsonObject { ["b"] = 1, ["10"] = 2, ["a"] = 3, ["2"] = 4 },
        };
        // JavaScript objects put integer-like keys first; 1.0 is an integer once parsed by JavaScript.
        Assert.Equal("5 7 2.5 1 true x true  {\"2\": 4, \"10\": 2, \"b\": 1, \"a\": 3}",
            Render("{{ i }} {{ l }} {{ f }} {{ whole }} {{ whole is integer }} {{ s }} {{ b }} {{ n }} {{ o | tojson }}", variables));
    }

    [Fact]
    public void StrftimeNowUsesTheClock()
    {
        var clock = new ChatTemplateGoldenTests.FixedClock();
        var template = new JinjaChatTemplate("{{ strftime_now('%d %b %Y, %B %m %H:%M %% %j') }}", "t", clock: clock);
        Assert.Equal("26 Jul 2024, July 07 09:05 % %j", template.Render(new JsonArray()));
    }

    [Theory]
    [InlineData(1e21, "1e+21")]
    [InlineData(1e20, "100000000000000000000")]
    [InlineData(123.456, "123.456")]
    [InlineData(1e-7, "1e-7")]
    [InlineData(0.000001, "0.000001")]
    [InlineData(0.30000000000000004, "0.30000000000000004")]
    [InlineData(9007199254740992, "9007199254740992")]
    [InlineData(1.5e300, "1.5e+300")]
    [InlineData(-2.5e-10, "-2.5e-10")]
    [InlineData(5e-324, "5e-324")]
    [InlineData(-0.0, "0")]
    public void NumbersFormatAsJavaScript(double value, string expected) => Assert.Equal(expected, Js.NumberToString(value));

    [Fact]
    public void ParsedTemplatesRenderConcurrently()
    {
        var template = new JinjaChatTemplate("{% for m in messages %}{{ m.content | upper }}{% endfor %}", "t");
        var results = Enumerable.Range(0, 64).AsParallel().Select(i =>
            template.Render(new JsonArray(new JsonObject { ["content"] = $"m{i}" }))).ToList();
        Assert.Equal(Enumerable.Range(0, 64).Select(i => $"M{i}"), results);
    }
}
