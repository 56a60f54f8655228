using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Preference;

/// <summary>
/// Preference dataset types and TRL's tokenization. The expected strings are Axolotl's transforms written out by hand
/// (the f-strings of prompt_strategies/{dpo,kto,orpo}); the expected ids are those strings through the Llama-2
/// tokenizer (whose agreement with HF tokenizers is tested elsewhere), split as TRL splits them.
/// </summary>
public class PreferenceDataTests
{
    static readonly Lazy<Tokenizer> Llama2 = new(() => Tokenizer.FromFolder(TestSetup.Data("tok-llama2")));
    static readonly IChatTemplate ChatML = ChatTemplates.Resolve("chatml", null, null, new SpecialTokens("<s>", "</s>"));

    static Row R(string json, int line = 3) => new((JsonObject)JsonNode.Parse(json)!, "prefs.jsonl", line, IsLine: true);

    static PreferenceText Pair(string type, string json, PreferenceFormat? f = null, Axolotl.Config.RlMethod rl = Axolotl.Config.RlMethod.Dpo) =>
        PreferenceTypes.Pairs(rl, type, f ?? new PreferenceFormat(), () => ChatML)(R(json));

    [Fact]
    public void Chatml_intel_wraps_system_and_question_and_ends_completions_with_im_end()
    {
        var t = Pair("chatml.intel", """{"system":"Be brief.","question":"Capital of France?","chosen":"Paris.","rejected":"Rome."}""");
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n", t.Prompt);
        Assert.Equal("Paris.<|im_end|>", t.Chosen);
        Assert.Equal("Rome.<|im_end|>", t.Rejected);
    }

    [Fact]
    public void Chatml_default_falls_back_through_prompt_keys_and_response_fields()
    {
        var t = Pair("chatml", """{"instruction":"Say hi","chosen_response":"Hi","rejected_response":"No","system":""}""");
        Assert.Equal("<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n", t.Prompt);
        Assert.Equal(("Hi<|im_end|>", "No<|im_end|>"), (t.Chosen, t.Rejected));
    }

    [Fact]
    public void Llama3_argilla_chat_and_ultra_read_message_lists()
    {
        var row = """{"prompt":"Q","chosen":[{"role":"user","content":"Q"},{"role":"assistant","content":"good"}],"rejected":[{"role":"user","content":"Q"},{"role":"assistant","content":"bad"}]}""";
        var chat = Pair("llama3.argilla_chat", row);
        Assert.Equal("<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", chat.Prompt);
        Assert.Equal(("good<|eot_id|>", "bad<|eot_id|>"), (chat.Chosen, chat.Rejected));
        Assert.Equal(chat, Pair("llama3.ultra", row));
    }

    [Fact]
    public void Zephyr_nectar_takes_the_two_highest_ranks()
    {
        var t = Pair("zephyr.nectar", """{"prompt":"P","answers":[{"answer":"a1","rank":1},{"answer":"a3","rank":3},{"answer":"a2","rank":2}]}""");
        Assert.Equal("<|system|>\n</s>\n<|user|>\nP</s>\n<|assistant|>\n", t.Prompt);
        Assert.Equal(("a3", "a2"), (t.Chosen, t.Rejected));
    }

    [Fact]
    public void User_defined_formats_fields()
    {
        var f = new PreferenceFormat { FieldPrompt = "q", FieldChosen = "good", FieldRejected = "bad", PromptFormat = "[{system}] {prompt} =>", ChosenFormat = " {chosen}!" };
        var t = Pair("user_defined.default", """{"q":"2+2","good":"4","bad":"5","system":"math"}""", f);
        Assert.Equal(new PreferenceText("[math] 2+2 =>", " 4!", "5"), t);
    }

    [Fact]
    public void Chat_template_default_renders_prompt_with_generation_prompt_and_cuts_completions_at_their_content()
    {
        var t = Pair("chat_template.default", """{"messages":[{"role":"user","content":"Capital of France?"}],"chosen":{"role":"assistant","content":"Paris."},"rejected":"Rome."}""");
        Assert.Equal("<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n", t.Prompt);
        Assert.Equal(("Paris.<|im_end|>", "Rome.<|im_end|>"), (t.Chosen, t.Rejected));
        var argilla = Pair("chat_template.argilla_chat", """{"chosen":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Paris."}],"rejected":[{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Rome."}]}""");
        Assert.Equal(t, argilla);
    }

    [Fact]
    public void Orpo_chat_template_argilla_cuts_completions_after_the_prompt_text()
    {
        var t = Pair("chat_template.argilla", """{"system":"S","chosen":[{"role":"user","content":"U"},{"role":"assistant","content":"good"}],"rejected":[{"role":"user","content":"U"},{"role":"assistant","content":"bad"}]}""", rl: Axolotl.Config.RlMethod.Orpo);
        Assert.Equal("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n", t.Prompt);
        Assert.Equal(("good<|im_end|>\n", "bad<|im_end|>\n"), (t.Chosen, t.Rejected));
    }

    [Fact]
    public void Kto_types_keep_the_label()
    {
        var k = PreferenceTypes.Unpaired("chatml.argilla", new PreferenceFormat())(R("""{"instruction":"I","completion":"C","label":false}"""));
        Assert.Equal(new KtoText("<|im_start|>user\nI<|im_end|>\n<|im_start|>assistant\n", "C<|im_end|>", false), k);
        var u = PreferenceTypes.Unpaired("user_defined.default", new PreferenceFormat { FieldLabel = "ok", PromptFormat = "Q: {prompt}\nA:" })(R("""{"prompt":"x","completion":" y","ok":true}"""));
        Assert.Equal(new KtoText("Q: x\nA:", " y", true), u);
    }

    [Fact]
    public void Text_pairs_tokenize_as_trl_with_bos_and_an_appended_eos()
    {
        var tok = Llama2.Value;
        var t = new PreferenceText("Question: 2+2?\nAnswer:", " 4", " 5</s>");
        var e = PreferenceTokenization.Tokenize(t, tok);
        int[] prompt = [.. tok.Encode("Question: 2+2?\nAnswer:")];
        Assert.Equal(1, prompt[0]); // BOS, from the tokenizer's special tokens
        Assert.Equal(prompt, e.Prompt);
        Assert.Equal(tok.Encode("Question: 2+2?\nAnswer: 4</s>").Skip(prompt.Length), e.Chosen);
        Assert.Equal(tok.Encode("Question: 2+2?\nAnswer: 5</s>").Skip(prompt.Length), e.Rejected); // EOS not doubled
        // This tokenizer's </s> is a normalized added token, so in text it is spelled out in pieces, as HF does too
        // (tokenizer-goldens): TRL's appended EOS text is what the model sees.
        Assert.True(e.Chosen.Length > tok.Encode("Question: 2+2?\nAnswer: 4").Count - prompt.Length);
    }

    [Fact]
    public void A_prompt_that_is_not_a_prefix_of_prompt_plus_completion_warns_as_trl()
    {
        var warnings = new List<string>();
        // Llama-2's SentencePiece merges "a" and "b" across the boundary: "a" + "b" tokenizes as "ab".
        PreferenceTokenization.Tokenize(new PreferenceText("xa", "b", "c"), Llama2.Value, warnings.Add);
        Assert.Contains(warnings, w => w.Contains("prompt+chosen"));
    }

    [Fact]
    public void Collate_stacks_chosen_then_rejected_and_labels_only_completions()
    {
        var pairs = new[] { new PreferenceExample([1, 10, 11], [20, 2], [30, 31, 2]), new PreferenceExample([1, 12], [21, 2], [32, 2]) };
        var b = PreferenceTokenization.Collate(pairs, padTokenId: 0, maxLength: 5);
        Assert.Equal((4, 5), (b.Rows, b.Length));
        Assert.Equal(new long[] { 1, 10, 11, 20, 2, 1, 12, 21, 2, 0, 1, 10, 11, 30, 31, 1, 12, 32, 2, 0 }, b.InputIds);
        Assert.Equal(new long[] { -100, -100, -100, 20, 2, -100, -100, 21, 2, -100, -100, -100, -100, 30, 31, -100, -100, 32, 2, -100 }, b.Labels);
    }

    [Fact]
    public void Bad_rows_name_file_line_and_field()
    {
        var missing = Assert.Throws<BadRowError>(() => Pair("chatml.intel", """{"question":"Q","chosen":"A"}"""));
        Assert.Equal("prefs.jsonl, line 3: missing field 'rejected'.", missing.Message);
        var tok = Llama2.Value;
        var empty = Assert.Throws<BadRowError>(() => PreferenceTokenization.CheckLength(new PreferenceText("P", "", "r"), R("{}", 7), tok, 64, "drop", null));
        Assert.Contains("line 7", empty.Message);
        Assert.Contains("chosen", empty.Message);
        var longPrompt = Assert.Throws<BadRowError>(() => PreferenceTokenization.CheckLength(new PreferenceText("one two three four five", "a", "b"), R("{}", 9), tok, 64, "drop", 3));
        Assert.Contains("line 9", longPrompt.Message);
        Assert.Contains("max_prompt_len 3", longPrompt.Message);
        Assert.Throws<UserError>(() => PreferenceTypes.Pairs(Axolotl.Config.RlMethod.Dpo, "chatml.nonsense", new PreferenceFormat(), () => ChatML));
    }

    [Fact]
    public void Length_handling_drops_or_truncates_as_axolotl()
    {
        var tok = Llama2.Value;
        var t = new PreferenceText("Hello", " one two three four five six", " one");
        int prompt = tok.Encode("Hello", false).Count;
        Assert.Null(PreferenceTokenization.CheckLength(t, R("{}"), tok, prompt + 3, "drop", null));
        var cut = PreferenceTokenization.CheckLength(t, R("{}"), tok, prompt + 3, "truncate", null)!;
        Assert.Equal(tok.Decode(tok.Encode(" one two three four five six", false).Take(3)), cut.Chosen);
        Assert.Equal(" one", cut.Rejected);
        Assert.Same(t, PreferenceTokenization.CheckLength(t, R("{}"), tok, 64, "drop", null));
    }
}
