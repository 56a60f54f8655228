using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

/// <summary>Keeps the messages of the first render (the whole conversation) to show what the template was given.</summary>
sealed class RecordingTemplate(IChatTemplate inner) : IChatTemplate
{
    public JsonArray? First { get; private set; }

    public string Render(JsonArray messages, bool addGenerationPrompt = false, JsonArray? tools = null, JsonObject? extraVariables = null)
    {
        First ??= messages.DeepClone().AsArray();
        return inner.Render(messages, addGenerationPrompt, tools, extraVariables);
    }
}

/// <summary>
/// Axolotl 0.18's chat_template features beyond roles and EOS: eot_tokens with train_on_eot, OpenAI-style list content
/// (joined into text, per-part train/weight), split_thinking and reasoning_content. Expected ids are built segment by
/// segment from the rendered text; expected labels follow the rules in prompt_strategies/chat_template.py.
/// </summary>
public class ChatTemplateFeatureTests : IDisposable
{
    const int ImStart = 510, ImEnd = 511;
    readonly TempDir dir = TestSetup.TempDir();
    readonly Tokenizer plain = Tokenizer.FromFolder(TestSetup.Data("tok-tiny512")); // EOS <|endoftext|>, which chatml never writes
    readonly Tokenizer imEndEos;                                                    // EOS <|im_end|>, as Qwen's tokenizers have it
    readonly List<string> warnings = [];

    public ChatTemplateFeatureTests() => imEndEos = ChatTemplateTests.ImEndEosTokenizer(dir);

    public void Dispose() => dir.Dispose();

    static DatasetConfig Chat(Action<DatasetConfig>? set = null)
    {
        var d = new DatasetConfig { Path = "chat.jsonl", Type = "chat_template" };
        set?.Invoke(d);
        return d;
    }

    static IChatTemplate Bundled(string name, Tokenizer tok) => new JinjaChatTemplate(ChatTemplates.BundledSource(name)!, name, SpecialTokens.From(tok));

    ChatTemplateStrategy Strategy(Tokenizer tok, DatasetConfig d, IChatTemplate template, IReadOnlyList<string>? eot = null) =>
        new(new StrategyContext(() => tok, 4096, false) { EotTokens = eot, Warn = warnings.Add }, d, template);

    static Example Run(ChatTemplateStrategy s, string row) =>
        s.Tokenize(new Row(JsonNode.Parse(row)!.AsObject(), "chat.jsonl", 3, IsLine: true)).Single();

    /// <summary>Ids and labels from pieces: text (encoded alone) or a special id, each trained or not.</summary>
    sealed class Expect(Tokenizer tok)
    {
        public readonly List<int> Ids = [], Labels = [];
        public Expect Text(string text, bool train = false)
        {
            foreach (var id in tok.Encode(text, addSpecialTokens: false)) Add(id, train);
            return this;
        }
        public Expect Add(int id, bool train = false)
        {
            Ids.Add(id);
            Labels.Add(train ? id : Example.IgnoreIndex);
            return this;
        }
        public void Check(Example e)
        {
            Assert.Equal(Ids, e.InputIds);
            Assert.Equal(Labels, e.Labels);
        }
    }

    const string Conversation = ChatTemplateTests.Conversation;
    static readonly (string Role, string Content)[] Turns = ChatTemplateTests.Turns;

    /// <summary>ChatML: &lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n per turn; the assistant contents trained.</summary>
    Expect ChatMl(Tokenizer tok, Func<int, bool> terminator)
    {
        var x = new Expect(tok);
        for (int i = 0; i < Turns.Length; i++)
            x.Add(ImStart).Text($"{Turns[i].Role}\n").Text(Turns[i].Content, Turns[i].Role == "assistant").Add(ImEnd, terminator(i)).Text("\n");
        return x;
    }

    // ---- eot_tokens and train_on_eot ----

    [Theory]
    [InlineData("all")]
    [InlineData("turn")]
    [InlineData("last")]
    [InlineData("none")]
    public void Train_on_eot_decides_the_custom_eot_token_of_each_turn(string option)
    {
        // EOS never appears in the rendered text, so train_on_eos (turn) trains nothing; <|im_end|> follows train_on_eot.
        var s = Strategy(plain, Chat(d => d.TrainOnEot = Enum.Parse<Axolotl.Config.TrainOnEnd>(option, ignoreCase: true)), Bundled("chatml", plain), ["<|im_end|>"]);
        Func<int, bool> terminator = option switch
        {
            "all" => _ => true,
            "turn" => i => Turns[i].Role == "assistant",
            "last" => i => i == Turns.Length - 1,
            _ => _ => false,
        };
        ChatMl(plain, terminator).Check(Run(s, Conversation));
    }

    [Fact]
    public void Without_eot_tokens_the_eos_token_is_the_eot_token_and_both_options_apply_to_it()
    {
        // EOS alone as EOT skips Axolotl's conflict check: train_on_eot all trains every terminator, train_on_eos turn adds nothing more.
        var s = Strategy(imEndEos, Chat(d => { d.TrainOnEos = Axolotl.Config.TrainOnEnd.Turn; d.TrainOnEot = Axolotl.Config.TrainOnEnd.All; }), Bundled("chatml", imEndEos));
        ChatMl(imEndEos, _ => true).Check(Run(s, Conversation));
        Assert.Empty(warnings);
    }

    [Fact]
    public void Several_eot_tokens_each_end_the_turns_that_write_them()
    {
        // User turns end with <|im_start|>, assistant turns with <|im_end|>: both are EOT tokens.
        var template = new JinjaChatTemplate(
            "{% for m in messages %}{{ m.role }}\n{{ m.content }}{% if m.role == 'user' %}<|im_start|>{% else %}<|im_end|>{% endif %}{% endfor %}", "two-terminators");
        const string row = """{"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]}""";
        foreach (var option in new[] { "all", "turn" })
        {
            var e = Run(Strategy(plain, Chat(d => d.TrainOnEot = Enum.Parse<Axolotl.Config.TrainOnEnd>(option, ignoreCase: true)), template, ["<|im_start|>", "<|im_end|>"]), row);
            new Expect(plain).Text("user\n").Text("Hi there").Add(ImStart, option == "all")
                .Text("assistant\n").Text("Hello! How can I help?", true).Add(ImEnd, true).Check(e);
        }
    }

    [Fact]
    public void An_eot_token_the_template_never_writes_is_dropped_with_a_warning()
    {
        // <|endoftext|> (the EOS) is not in chatml: dropped before the conflict check, so differing options are no error.
        var s = Strategy(plain, Chat(d => { d.TrainOnEos = Axolotl.Config.TrainOnEnd.None; d.TrainOnEot = Axolotl.Config.TrainOnEnd.All; }), Bundled("chatml", plain), ["<|im_end|>", "<|endoftext|>"]);
        ChatMl(plain, _ => true).Check(Run(s, Conversation));
        Assert.Contains(warnings, w => w.Contains("'<|endoftext|>' is not in the chat template"));
        // EOS named alone is kept though the template never writes it (Axolotl only warns), so no terminator is trained.
        var none = Strategy(plain, Chat(d => d.TrainOnEot = Axolotl.Config.TrainOnEnd.All), Bundled("chatml", plain), ["<|endoftext|>"]);
        ChatMl(plain, _ => false).Check(Run(none, Conversation));
    }

    [Fact]
    public void An_eos_token_missing_from_the_template_is_warned_about()
    {
        Strategy(plain, Chat(), Bundled("chatml", plain));
        Assert.Contains(warnings, w => w.Contains("EOS token '<|endoftext|>' is not in the chat template") && w.Contains("eot_tokens"));
        warnings.Clear();
        // A template naming the eos_token variable counts as writing it.
        Strategy(plain, Chat(), new JinjaChatTemplate("{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}", "t"));
        Assert.Empty(warnings);
    }

    [Fact]
    public void Eot_tokens_that_are_not_single_tokens_or_conflict_with_eos_are_errors()
    {
        var template = new JinjaChatTemplate("{% for m in messages %}{{ m.content }}<turn_end><|im_end|><|endoftext|>{% endfor %}", "t");
        Assert.True(plain.Encode("<turn_end>", addSpecialTokens: false).Count > 1);
        var split = Assert.Throws<UserError>(() => Strategy(plain, Chat(), template, ["<turn_end>"]));
        Assert.Contains("'<turn_end>' is encoded as", split.Message);
        Assert.Contains("tokens:", split.Message);
        Assert.Contains("encodes to no tokens", Assert.Throws<UserError>(() => Strategy(plain, Chat(), template, [""])).Message);
        var conflict = Assert.Throws<UserError>(() => Strategy(plain, Chat(d => { d.TrainOnEos = Axolotl.Config.TrainOnEnd.Turn; d.TrainOnEot = Axolotl.Config.TrainOnEnd.All; }), template, ["<|im_end|>", "<|endoftext|>"]));
        Assert.Contains("train_on_eos (turn) and train_on_eot (all) differ", conflict.Message);
        // The same tokens with equal options (train_on_eot following train_on_eos) are fine.
        Strategy(plain, Chat(d => d.TrainOnEos = Axolotl.Config.TrainOnEnd.All), template, ["<|im_end|>", "<|endoftext|>"]);
    }

    // ---- list content ----

    [Fact]
    public void List_content_is_joined_into_the_text_the_string_form_gives()
    {
        const string parts = """
            {"messages": [
              {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}]},
              {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}, "ignored", {"content": " there"}]},
              {"role": "assistant", "content": [{"type": "text", "text": ""}, {"value": "Hello! How can I help?"}]},
              {"role": "user", "content": [{"type": "text", "text": "Tell me a joke"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "Why did the cat "}, {"type": "text", "text": "sit on the mouse?"}]}
            ]}
            """;
        foreach (var template in new IChatTemplate[] { new ChatMlTemplate(), Bundled("chatml", imEndEos), Bundled("qwen3", imEndEos) })
        {
            var recorder = new RecordingTemplate(template);
            var fromParts = Run(Strategy(imEndEos, Chat(), recorder), parts);
            var fromText = Run(Strategy(imEndEos, Chat(), template), Conversation);
            Assert.Equal(fromText.InputIds, fromParts.InputIds);
            Assert.Equal(fromText.Labels, fromParts.Labels);
            Assert.Equal(Turns.Select(t => t.Content), recorder.First!.Select(m => (string)m!["content"]!));
        }
        ChatMl(imEndEos, i => Turns[i].Role == "assistant").Check(Run(Strategy(imEndEos, Chat(), new ChatMlTemplate()), parts));
    }

    [Fact]
    public void Parts_flagged_train_false_or_weight_0_are_masked_and_the_rest_trained()
    {
        // The part boundary is a token boundary here, so the masked part's tokens are exactly its own.
        Assert.Equal(imEndEos.Encode("Let me think. The answer is 4.", false), [.. imEndEos.Encode("Let me think.", false), .. imEndEos.Encode(" The answer is 4.", false)]);
        foreach (var flag in new[] { "\"train\": false", "\"weight\": 0", "\"weight\": 0.0", "\"weight\": false" })
        {
            var row = $$"""
                {"messages": [{"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": [{"type": "text", "text": "Let me think.", {{flag}}}, {"type": "text", "text": " The answer is 4."}]}]}
                """;
            new Expect(imEndEos).Add(ImStart).Text("user\n").Text("What is 2+2?").Add(ImEnd).Text("\n")
                .Add(ImStart).Text("assistant\n").Text("Let me think.").Text(" The answer is 4.", true).Add(ImEnd, true).Text("\n")
                .Check(Run(Strategy(imEndEos, Chat(), new ChatMlTemplate()), row));
        }
    }

    [Fact]
    public void Part_flags_decide_whether_the_turn_trains_regardless_of_its_role()
    {
        // Flags make a training detail, and a non-empty detail makes the turn trainable, so a user turn trains its
        // flagged-true part, and an assistant turn whose parts are all false still trains its terminator.
        const string row = """
            {"messages": [{"role": "user", "content": [{"text": "What is 2+2?", "train": true}]},
              {"role": "assistant", "content": [{"text": "Four.", "weight": 0}]}]}
            """;
        new Expect(imEndEos).Add(ImStart).Text("user\n").Text("What is 2+2?", true).Add(ImEnd, true).Text("\n")
            .Add(ImStart).Text("assistant\n").Text("Four.").Add(ImEnd, true).Text("\n")
            .Check(Run(Strategy(imEndEos, Chat(), new ChatMlTemplate()), row));
    }

    [Fact]
    public void A_part_whose_text_is_not_a_string_is_a_bad_row()
    {
        var e = Assert.Throws<BadRowError>(() => Run(Strategy(imEndEos, Chat(), new ChatMlTemplate()),
            """{"messages": [{"role": "user", "content": [{"text": 5}]}, {"role": "assistant", "content": "x"}]}"""));
        Assert.Equal("wrong type", e.Reason);
        Assert.StartsWith("chat.jsonl, line 3: messages[0]", e.Message);
    }

    // ---- split_thinking and reasoning_content ----

    JsonObject LastAssistant(DatasetConfig d, string content, Action<JsonObject>? extra = null)
    {
        var message = new JsonObject { ["role"] = "assistant", ["content"] = content };
        extra?.Invoke(message);
        var row = new JsonObject { ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "Q" }, message) };
        var recorder = new RecordingTemplate(new ChatMlTemplate());
        Run(Strategy(imEndEos, d, recorder), row.ToJsonString());
        return recorder.First![1]!.AsObject();
    }

    [Theory]
    [InlineData("<think>\n  Add them. \n</think>\n\n  The answer is 4.", "Add them.", "The answer is 4.")]
    [InlineData("<think>\n\n</think>\n\nNo think here.", "", "No think here.")]
    [InlineData("Before <think>T</think> after ", "T", "after ")]                     // text before the tags is lost; trailing kept
    [InlineData("<reasoning>R</reasoning>Answer", "R", "Answer")]
    [InlineData("<|begin_of_thought|> T <|end_of_thought|> x <|begin_of_solution|> S <|end_of_solution|> y", "T", "S")]
    [InlineData("<think>A</think><reasoning>B</reasoning>C", "A", "<reasoning>B</reasoning>C")] // the first pair found wins
    [InlineData("</think>first<think>second", "", "first<think>second")]                // the close tag searched from the start
    [InlineData("<think>\u001cA\u00a0</think>\u001f\u2003B", "A", "B")]                   // Python's whitespace, U+001C..U+001F included
    public void Split_thinking_moves_the_tagged_reasoning_out_of_the_content(string content, string reasoning, string rest)
    {
        var m = LastAssistant(Chat(d => d.SplitThinking = true), content);
        Assert.Equal(reasoning, (string?)m["reasoning_content"]);
        Assert.Equal(rest, (string?)m["content"]);
    }

    [Fact]
    public void Split_thinking_leaves_untagged_and_non_assistant_content_alone_and_follows_template_thinking_key()
    {
        var untagged = LastAssistant(Chat(d => d.SplitThinking = true), "  plain answer ");
        Assert.Equal("  plain answer ", (string?)untagged["content"]);
        Assert.False(untagged.ContainsKey("reasoning_content"));
        Assert.Equal("<think>x</think>y", (string?)LastAssistant(Chat(), "<think>x</think>y")["content"]);   // off by default
        var keyed = LastAssistant(Chat(d => { d.SplitThinking = true; d.TemplateThinkingKey = "thinking"; }), "<think>x</think>y");
        Assert.Equal("x", (string?)keyed["thinking"]);
        // A reasoning field the message already has passes through over the split one, as in Axolotl.
        var given = LastAssistant(Chat(d => d.SplitThinking = true), "<think>x</think>y", m => m["reasoning_content"] = "given");
        Assert.Equal(("given", "y"), ((string?)given["reasoning_content"], (string?)given["content"]));
        var user = new RecordingTemplate(new ChatMlTemplate());
        Run(Strategy(imEndEos, Chat(d => d.SplitThinking = true), user), """{"messages": [{"role": "user", "content": "<think>u</think>v"}, {"role": "assistant", "content": "a"}]}""");
        Assert.Equal("<think>u</think>v", (string?)user.First![0]!["content"]);
    }

    [Fact]
    public void Split_thinking_needs_assistant_content()
    {
        var e = Assert.Throws<BadRowError>(() => Run(Strategy(imEndEos, Chat(d => d.SplitThinking = true), new ChatMlTemplate()),
            """{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "tool_calls": []}]}"""));
        Assert.Contains("split_thinking", e.Message);
    }

    [Fact]
    public void Reasoning_fields_reach_the_template_by_mapping_or_by_name()
    {
        var mapped = LastAssistant(Chat(d => d.MessagePropertyMappings = new() { ["role"] = "role", ["content"] = "content", ["reasoning_content"] = "thinking" }),
            "A", m => m["thinking"] = "T");
        Assert.Equal("T", (string?)mapped["reasoning_content"]);
        var byName = LastAssistant(Chat(), "A", m => { m["reasoning_content"] = "R"; m["thinking"] = "T"; });
        Assert.Equal(("R", "T"), ((string?)byName["reasoning_content"], (string?)byName["thinking"]));
    }

    const string Reasoning = """
        {"messages": [{"role": "user", "content": "What is 2+2?"},
          {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nThe answer is 4."}]}
        """;

    [Fact]
    public void Qwen3_split_thinking_renders_as_the_explicit_reasoning_content_and_trains_reasoning_and_answer()
    {
        var qwen3 = Bundled("qwen3", imEndEos);
        var split = Run(Strategy(imEndEos, Chat(d => d.SplitThinking = true), qwen3), Reasoning);
        var given = Run(Strategy(imEndEos, Chat(), qwen3),
            """{"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "The answer is 4.", "reasoning_content": "Add them."}]}""");
        Assert.Equal(given.InputIds, split.InputIds);
        Assert.Equal(given.Labels, split.Labels);
        // qwen3 writes the last turn's reasoning in <think> tags (see the bundled-qwen3 goldens).
        Assert.Equal("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nAdd them.\n</think>\n\nThe answer is 4.<|im_end|>\n",
            imEndEos.Decode(split.InputIds));
        // The dummy turn has no reasoning, so the trained span covers reasoning and answer, then the terminator.
        var trained = imEndEos.Decode(split.InputIds.Where((_, i) => split.Labels[i] != Example.IgnoreIndex));
        Assert.EndsWith("Add them.\n</think>\n\nThe answer is 4.<|im_end|>", trained);
        Assert.DoesNotContain("What is", trained);
        Assert.DoesNotContain("assistant", trained);
    }

    [Fact]
    public void Train_detail_on_a_turn_with_reasoning_counts_offsets_from_the_content_not_the_reasoning()
    {
        // The dummy keeps the reasoning, so the span starts at the answer and the offsets fall on " world".
        const string row = """
            {"messages": [{"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello world again", "reasoning_content": "Greet back.",
               "detail": [{"begin_offset": 5, "end_offset": 10, "train": true}]}]}
            """;
        var e = Run(Strategy(imEndEos, Chat(d => d.MessageFieldTrainingDetail = "detail"), Bundled("qwen3", imEndEos)), row);
        Assert.Contains("<think>\nGreet back.\n</think>\n\nHello world again<|im_end|>", imEndEos.Decode(e.InputIds));
        Assert.Equal(" world<|im_end|>", imEndEos.Decode(e.InputIds.Where((_, i) => e.Labels[i] != Example.IgnoreIndex)));
    }

    [Fact]
    public void Reasoning_parts_with_flags_train_only_their_flagged_reasoning_and_not_the_answer()
    {
        // A reasoning training detail without a content one trains the reasoning's flagged parts and leaves the answer
        // untrained (Axolotl trains the whole span only when neither detail is set); the terminator follows the turn.
        Assert.Equal(imEndEos.Encode("Add them. Two plus two.", false), [.. imEndEos.Encode("Add them.", false), .. imEndEos.Encode(" Two plus two.", false)]);
        const string row = """
            {"messages": [{"role": "user", "content": "What is 2+2?"},
              {"role": "assistant", "content": "The answer is 4.", "reasoning_content": [{"text": "Add them.", "train": false}, {"text": " Two plus two.", "train": true}]}]}
            """;
        var e = Run(Strategy(imEndEos, Chat(), Bundled("qwen3", imEndEos)), row);
        var text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nAdd them. Two plus two.\n</think>\n\nThe answer is 4.<|im_end|>\n";
        Assert.Equal(text, imEndEos.Decode(e.InputIds));
        Assert.Equal(" Two plus two.<|im_end|>", imEndEos.Decode(e.InputIds.Where((_, i) => e.Labels[i] != Example.IgnoreIndex)));
    }
}

/// <summary>The keys through the config: accepted, not refused, and reaching the strategy.</summary>
public class ChatTemplateFeatureConfigTests
{
    [Fact]
    public void Eot_tokens_split_thinking_and_template_thinking_key_are_read_and_field_thinking_is_warned_about()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["chat.jsonl"], """{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>T</think>A"}]}""" + "\n");
        var config = ConfigLoader.Parse($"""
            base_model: m
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            learning_rate: 0.0002
            chat_template: qwen3
            eot_tokens: ["<|im_end|>", "<|endoftext|>"]
            datasets:
              - path: {dir["chat.jsonl"]}
                type: chat_template
                split_thinking: true
                template_thinking_key: reasoning_content
                field_thinking: thinking
                train_on_eot: all
            """, "cfg.yml");
        Assert.Equal(["<|im_end|>", "<|endoftext|>"], config.EotTokens);
        Assert.True(config.Datasets[0].SplitThinking);
        Assert.Contains(config.Warnings, w => w.StartsWith("cfg.yml:") && w.Contains("field_thinking has no effect"));
        var warnings = new List<string>();
        var tok = Tokenizer.FromFolder(TestSetup.Data("tok-tiny512"));
        var e = DatasetBuilder.Build(config, () => tok, warn: warnings.Add).Examples.Single();
        Assert.Contains(warnings, w => w.Contains("'<|endoftext|>' is not in the chat template"));
        Assert.Equal("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nT\n</think>\n\nA<|im_end|>\n", tok.Decode(e.InputIds));
        Assert.EndsWith("A<|im_end|>", tok.Decode(e.InputIds.Where((_, i) => e.Labels[i] != Example.IgnoreIndex)));
        // train_on_eot all: the user turn's <|im_end|> is trained as well.
        Assert.Equal(2, e.InputIds.Where((id, i) => id == 511 && e.Labels[i] == 511).Count());
    }
}
