using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

/// <summary>
/// A hand-written ChatML template (what Axolotl's chatml template renders), standing in for the Jinja engine: each
/// message as &lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n, tools (when given) in a leading block.
/// </summary>
sealed class ChatMlTemplate : IChatTemplate
{
    public string Render(JsonArray messages, bool addGenerationPrompt = false, JsonArray? tools = null, JsonObject? extraVariables = null)
    {
        var sb = new StringBuilder();
        if (tools is { Count: > 0 }) sb.Append("<|im_start|>system\n<tools>").Append(tools.ToJsonString()).Append("</tools><|im_end|>\n");
        foreach (var m in messages) sb.Append("<|im_start|>").Append((string)m!["role"]!).Append('\n').Append((string)m["content"]!).Append("<|im_end|>\n");
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }
}

/// <summary>Axolotl's chat_template strategy (prompt_strategies/chat_template.py): turn spans, roles, EOS/EOT, per-message training.</summary>
public class ChatTemplateTests : IDisposable
{
    readonly TempDir dir = TestSetup.TempDir();
    readonly Tokenizer tok;
    const int ImEnd = 511;

    public ChatTemplateTests() => tok = ImEndEosTokenizer(dir);

    /// <summary>tok-tiny512 with &lt;|im_end|&gt; as EOS, as Qwen's tokenizers have it: the turn terminator is the EOS token.</summary>
    internal static Tokenizer ImEndEosTokenizer(TempDir dir)
    {
        foreach (var f in Directory.GetFiles(TestSetup.Data("tok-tiny512"))) File.Copy(f, Path.Combine(dir.Path, Path.GetFileName(f)));
        var config = JsonNode.Parse(File.ReadAllText(dir["tokenizer_config.json"]))!.AsObject();
        config["eos_token"] = "<|im_end|>";
        File.WriteAllText(dir["tokenizer_config.json"], config.ToJsonString());
        return Tokenizer.FromFolder(dir.Path);
    }

    public void Dispose() => dir.Dispose();

    Example Run(DatasetConfig d, string row, bool trainOnInputs = false) =>
        new ChatTemplateStrategy(new StrategyContext(() => tok, 4096, trainOnInputs), d, new ChatMlTemplate())
            .Tokenize(new Row(JsonNode.Parse(row)!.AsObject(), "chat.jsonl", 7, IsLine: true)).Single();

    static DatasetConfig Chat(Action<DatasetConfig>? set = null)
    {
        var d = new DatasetConfig { Path = "chat.jsonl", Type = "chat_template" };
        set?.Invoke(d);
        return d;
    }

    internal const string Conversation = """
        {"messages": [
          {"role": "system", "content": "Be kind."},
          {"role": "user", "content": "Hi there"},
          {"role": "assistant", "content": "Hello! How can I help?"},
          {"role": "user", "content": "Tell me a joke"},
          {"role": "assistant", "content": "Why did the cat sit on the mouse?"}
        ]}
        """;

    internal static readonly (string Role, string Content)[] Turns =
        [("system", "Be kind."), ("user", "Hi there"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke"), ("assistant", "Why did the cat sit on the mouse?")];

    /// <summary>The expected ids built turn by turn; trained(i) says whether turn i's content and its &lt;|im_end|&gt; are labelled.</summary>
    (int[] Ids, int[] Labels) Expected((string Role, string Content)[] turns, Func<int, bool> content, Func<int, bool> end)
    {
        var ids = new List<int>();
        var labels = new List<int>();
        void Add(IEnumerable<int> part, bool train) { foreach (var id in part) { ids.Add(id); labels.Add(train ? id : -100); } }
        for (int i = 0; i < turns.Length; i++)
        {
            Add(tok.Encode($"<|im_start|>{turns[i].Role}\n", addSpecialTokens: false), false);
            Add(tok.Encode(turns[i].Content, addSpecialTokens: false), content(i));
            Add([ImEnd], end(i));
            Add(tok.Encode("\n", addSpecialTokens: false), false);
        }
        return (ids.ToArray(), labels.ToArray());
    }

    void AssertExample(Example e, (int[] Ids, int[] Labels) expected)
    {
        Assert.Equal(expected.Ids, e.InputIds);
        Assert.Equal(expected.Labels, e.Labels);
    }

    [Fact]
    public void Multi_turn_trains_assistant_content_and_its_eos_by_default()
    {
        var e = Run(Chat(), Conversation);
        AssertExample(e, Expected(Turns, i => i is 2 or 4, i => i is 2 or 4));
        // the rendered text, tokenised whole, is what the turns add up to
        Assert.Equal(tok.Encode(new ChatMlTemplate().Render(JsonNode.Parse(Conversation)!["messages"]!.AsArray()), addSpecialTokens: false), e.InputIds);
    }

    [Fact]
    public void Roles_to_train_names_the_trained_roles()
    {
        AssertExample(Run(Chat(d => d.RolesToTrain = ["user", "assistant"]), Conversation), Expected(Turns, i => i > 0, i => i > 0));
        AssertExample(Run(Chat(d => d.RolesToTrain = ["human"]), Conversation), Expected(Turns, i => i is 1 or 3, i => i is 1 or 3));
    }

    [Theory]
    [InlineData("all")]
    [InlineData("last")]
    [InlineData("none")]
    public void Train_on_eos_variants(string option)
    {
        var e = Run(Chat(d => d.TrainOnEos = Enum.Parse<Axolotl.Config.TrainOnEnd>(option, ignoreCase: true)), Conversation);
        Func<int, bool> end = option switch { "all" => _ => true, "last" => i => i == 4, _ => _ => false };
        AssertExample(e, Expected(Turns, i => i is 2 or 4, end));
    }

    [Fact]
    public void Train_on_eot_defaults_to_train_on_eos_and_can_differ_when_eot_is_another_token()
    {
        // With eot_tokens naming <|im_end|> and EOS a different token, train_on_eot alone decides the terminators.
        var plain = Tokenizer.FromFolder(TestSetup.Data("tok-tiny512"));
        var strategy = new ChatTemplateStrategy(new StrategyContext(() => plain, 4096, false) { EotTokens = ["<|im_end|>"] },
            Chat(d => { d.TrainOnEos = Axolotl.Config.TrainOnEnd.None; d.TrainOnEot = Axolotl.Config.TrainOnEnd.All; }), new ChatMlTemplate());
        var e = strategy.Tokenize(new Row(JsonNode.Parse(Conversation)!.AsObject(), "chat.jsonl", 1)).Single();
        Assert.Equal(5, e.InputIds.Select((id, i) => (id, i)).Count(x => x.id == ImEnd && e.Labels[x.i] == ImEnd));
    }

    [Fact]
    public void Per_message_train_overrides_the_role()
    {
        var row = """
            {"messages": [
              {"role": "user", "content": "Hi there", "train": true},
              {"role": "assistant", "content": "Hello! How can I help?", "train": false},
              {"role": "user", "content": "Tell me a joke"},
              {"role": "assistant", "content": "Why did the cat sit on the mouse?"}
            ]}
            """;
        var e = Run(Chat(d => d.MessageFieldTraining = "train"), row);
        AssertExample(e, Expected(Turns[1..], i => i is 0 or 3, i => i is 0 or 3));
    }

    [Fact]
    public void Train_detail_trains_only_the_tokens_inside_trained_ranges()
    {
        var row = """
            {"messages": [
              {"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "Hello world again", "detail": [
                {"begin_offset": 0, "end_offset": 4, "train": false}, {"begin_offset": 5, "end_offset": 10, "train": true},
                {"begin_offset": 11, "end_offset": 16, "train": false}]}
            ]}
            """;
        var e = Run(Chat(d => d.MessageFieldTrainingDetail = "detail"), row);
        var content = tok.Encode("Hello world again", addSpecialTokens: false).ToArray();
        var trained = e.InputIds.Select((id, i) => (id, label: e.Labels[i])).Where(x => x.label != -100).Select(x => tok.Decode([x.id])).ToList();
        Assert.Equal(" world", string.Concat(trained.Where(t => t != "<|im_end|>")));
        Assert.Contains("<|im_end|>", trained); // train_on_eos: turn still trains the terminator of a trained turn
    }

    [Fact]
    public void Drop_system_message_removes_the_system_turn()
    {
        AssertExample(Run(Chat(d => d.DropSystemMessage = true), Conversation), Expected(Turns[1..], i => i is 1 or 3, i => i is 1 or 3));
    }

    [Fact]
    public void ShareGPT_rows_through_field_messages_and_property_mappings()
    {
        var row = """{"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello! How can I help?"}]}""";
        var e = Run(Chat(d => { d.FieldMessages = "conversations"; d.MessagePropertyMappings = new() { ["role"] = "from", ["content"] = "value" }; }), row);
        AssertExample(e, Expected(Turns[1..3], i => i == 1, i => i == 1));
        var custom = Run(Chat(d =>
        {
            d.FieldMessages = "conversations"; d.MessagePropertyMappings = new() { ["role"] = "from", ["content"] = "value" };
            d.Roles = new() { ["user"] = ["human"], ["assistant"] = ["gpt"] };
        }), row);
        Assert.Equal(e.Labels, custom.Labels);
    }

    [Fact]
    public void Tools_and_the_rows_system_field_reach_the_template()
    {
        var row = """{"system": "Be kind.", "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": \"{}\"}}]", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}""";
        var e = Run(Chat(), row);
        var text = tok.Decode(e.InputIds);
        Assert.StartsWith("<|im_start|>system\n<tools>[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]</tools><|im_end|>\n<|im_start|>system\nBe kind.<|im_end|>", text);
        Assert.Equal("Yo<|im_end|>", tok.Decode(e.InputIds.Where((id, i) => e.Labels[i] != -100)));
    }

    [Theory]
    [InlineData("""{"messages": []}""", "empty conversation", "chat.jsonl, line 7: 'messages' is an empty conversation.")]
    [InlineData("""{"text": "x"}""", "missing field", "chat.jsonl, line 7: missing field 'messages'")]
    [InlineData("""{"messages": [{"role": "robot", "content": "beep"}]}""", "unknown role", "chat.jsonl, line 7: messages[0] has the unknown role 'robot'")]
    [InlineData("""{"messages": "not json"}""", "wrong type", "chat.jsonl, line 7: 'messages' is a string that is not a JSON list")]
    public void Bad_conversations_are_named_with_their_reason(string row, string reason, string message)
    {
        var e = Assert.Throws<BadRowError>(() => Run(Chat(), row));
        Assert.Equal(reason, e.Reason);
        Assert.StartsWith(message, e.Message);
    }
}

/// <summary>chat_template datasets through the config, with the Jinja engine rendering the real templates.</summary>
public class ChatTemplateConfigTests
{
    const string Row = """{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}""";

    static PreparedDataset Build(TempDir dir, string keys)
    {
        File.WriteAllText(dir["chat.jsonl"], Row + "\n");
        var config = ConfigLoader.Parse($"""
            base_model: m
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            learning_rate: 0.0002
            datasets:
              - path: {dir["chat.jsonl"]}
                type: chat_template
            {keys}
            """, "cfg.yml");
        return DatasetBuilder.Build(config, () => Tokenizer.FromFolder(TestSetup.Data("tok-tiny512")));
    }

    [Fact]
    public void Bundled_chatml_gives_what_the_hand_written_chatml_gives()
    {
        using var dir = TestSetup.TempDir();
        var viaConfig = Build(dir, "chat_template: chatml").Examples.Single();
        var tok = Tokenizer.FromFolder(TestSetup.Data("tok-tiny512"));
        var byHand = new ChatTemplateStrategy(new StrategyContext(() => tok, 512, false), new DatasetConfig { Path = "chat.jsonl", Type = "chat_template" }, new ChatMlTemplate())
            .Tokenize(new Row(JsonNode.Parse(Row)!.AsObject(), "chat.jsonl", 1, IsLine: true)).Single();
        Assert.Equal(byHand.InputIds, viaConfig.InputIds);
        Assert.Equal(byHand.Labels, viaConfig.Labels);
        var trained = tok.Decode(viaConfig.InputIds.Where((_, i) => viaConfig.Labels[i] != Example.IgnoreIndex));
        Assert.Contains("Hello! How can I help?", trained);
        Assert.Contains("Blue.", trained);
        Assert.DoesNotContain("Name a colour.", trained);
    }

    [Fact]
    public void Unset_chat_template_uses_the_tokenizers_own_and_a_jinja_template_is_taken_from_the_config()
    {
        using var dir = TestSetup.TempDir();
        var tok = Tokenizer.FromFolder(TestSetup.Data("tok-tiny512"));
        var fromTokenizer = Build(dir, "").Examples.Single();
        Assert.StartsWith("<|im_start|>system\nBe kind.<|im_end|>", tok.Decode(fromTokenizer.InputIds));
        var jinja = Build(dir, "chat_template: jinja\nchat_template_jinja: \"{% for m in messages %}[{{ m.role }}] {{ m.content }}\\n{% endfor %}\"").Examples.Single();
        Assert.StartsWith("[system] Be kind.\n[user] Hi there\n", tok.Decode(jinja.InputIds));
        var e = Assert.Throws<UserError>(() => Build(dir, "chat_template: no_such_template"));
        Assert.Contains("no_such_template", e.Message);
    }
}
