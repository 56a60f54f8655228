using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

/// <summary>
/// Each of Axolotl's instruction strategies: the exact prompt text (written out here from Axolotl's prompters.py and
/// prompt_strategies/*.py) and the label mask: prompt tokens (with BOS) masked, response without BOS, EOS appended.
/// </summary>
public class StrategyTests
{
    static readonly Tokenizer Llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));
    const int Eos = 2, Bos = 1;

    static Row RowOf(string json) => new(JsonNode.Parse(json)!.AsObject(), "data.jsonl", 3, IsLine: true);

    static Example Run(string type, string json, bool trainOnInputs = false, string? conversation = null) =>
        PromptStrategies.For(new DatasetConfig { Path = "x", Type = type, Conversation = conversation },
            new StrategyContext(() => Llama2, 2048, trainOnInputs)).Tokenize(RowOf(json)).Single();

    /// <summary>ids = tokens(prompt) + tokens(response) without BOS + EOS; labels mask the prompt.</summary>
    static void AssertInstruction(Example e, string prompt, string response, int eosCount = 1)
    {
        var p = Llama2.Encode(prompt);
        var r = Llama2.Encode(response).Skip(1).Concat(Enumerable.Repeat(Eos, eosCount)).ToArray();
        Assert.Equal(p.Concat(r), e.InputIds);
        Assert.Equal(Enumerable.Repeat(-100, p.Count).Concat(r), e.Labels);
        Assert.Equal(Bos, e.InputIds[0]);
    }

    const string AlpacaRow = """{"instruction": "Add the numbers", "input": "2 3", "output": "5"}""";
    const string AlpacaNoInput = """{"instruction": "Name a colour", "output": "Blue"}""";

    [Theory]
    [InlineData("alpaca:chat", "SYSTEM: Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\nUSER: Add the numbers\n2 3\nASSISTANT:",
        "SYSTEM: Below is an instruction that describes a task. Write a response that appropriately completes the request.\nUSER: Name a colour\nASSISTANT:")]
    [InlineData("alpaca:chatml", "<|im_start|>system\nBelow is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.<|im_end|>\n<|im_start|>user\nAdd the numbers\n2 3<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nBelow is an instruction that describes a task. Write a response that appropriately completes the request.<|im_end|>\n<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n")]
    [InlineData("alpaca:phi", "<|system|>\nBelow is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.<|end|>\n<|user|>\nAdd the numbers<|end|>2 3<|assistant|>",
        "<|system|>\nBelow is an instruction that describes a task. Write a response that appropriately completes the request.<|end|>\n<|user|>\nName a colour<|end|>\n<|assistant|>\n")]
    [InlineData("alpaca:instruct", "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers\n\n### Input:\n2 3\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nName a colour\n\n### Response:\n")]
    [InlineData("alpaca_chat", "SYSTEM: Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\nUSER: Add the numbers\n2 3\nASSISTANT:",
        "SYSTEM: Below is an instruction that describes a task. Write a response that appropriately completes the request.\nUSER: Name a colour\nASSISTANT:")]
    [InlineData("alpaca_instruct.load_no_prompt", "### Instruction:\nAdd the numbers\n\n### Input:\n2 3\n\n### Response:\n", "### Instruction:\nName a colour\n\n### Response:\n")]
    public void Alpaca_prompt_styles(string type, string withInput, string withoutInput)
    {
        AssertInstruction(Run(type, AlpacaRow), withInput, "5");
        AssertInstruction(Run(type, AlpacaNoInput), withoutInput, "Blue");
    }

    [Fact]
    public void Alpaca_chat_takes_the_style_from_conversation()
    {
        AssertInstruction(Run("alpaca_chat", AlpacaNoInput, conversation: "chatml"),
            "<|im_start|>system\nBelow is an instruction that describes a task. Write a response that appropriately completes the request.<|im_end|>\n<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n", "Blue");
    }

    [Theory]
    [InlineData("jeopardy", """{"question": "It orbits the Earth", "category": "SPACE", "answer": "the Moon"}""",
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nIt orbits the Earth\n\n### Input:\nSPACE\n\n### Response:\n", "what is the Moon")]
    [InlineData("oasst", """{"INSTRUCTION": "Say hi", "RESPONSE": "Hi"}""",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi\n\n### Response:\n", "Hi")]
    [InlineData("gpteacher", """{"instruction": "Say hi", "input": "", "response": "Hi"}""",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi\n\n### Response:\n", "Hi")]
    [InlineData("summarizetldr", """{"article": "Long text.", "summary": "Short."}""",
        "USER: Summarize the following article as a TL;DR.\nLong text.\nASSISTANT:", "Short.")]
    [InlineData("explainchoice", """{"question": "Which is red?", "choices": ["apple", "sky"], "explanation": "Apples are red."}""",
        "Choose the answer that best answers the question. Explain your reasoning.\n\n\n### Instruction:\nWhich is red?\n\n### Input:\n- \"apple\"\n- \"sky\"\n\n### Response:\n", "Apples are red.")]
    [InlineData("concisechoice", """{"question": "Which is red?", "choices": ["apple", "sky"], "solution": "apple"}""",
        "Choose the answer that best answers the question. Be concise in your response.\n\nUSER: Which is red?\n- \"apple\"\n- \"sky\"\nASSISTANT:", "apple")]
    [InlineData("alpaca_chat.load_qa", """{"question": "Capital of France?", "answer": "Paris"}""",
        "SYSTEM: Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that appropriately and concisely completes the request.\n\n\nUSER: Capital of France?\nASSISTANT:", "Paris")]
    [InlineData("alpaca_chat.load_camel_ai", """{"message_1": "What is 2+2?", "message_2": "4"}""",
        "SYSTEM: Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that appropriately and concisely completes the request.\n\n\nUSER: What is 2+2?\nASSISTANT:", "4")]
    [InlineData("alpaca_w_system.load_open_orca", """{"system_prompt": "Be brief.", "question": "Why?", "response": "Because."}""",
        "### System:\nBe brief.\n### Human:\nWhy?\n### Assistant:\n", "Because.")]
    [InlineData("alpaca_w_system.load_open_orca", """{"system_prompt": "", "question": "Why?", "response": "Because."}""",
        "### Human:\nWhy?\n### Assistant:\n", "Because.")]
    [InlineData("alpaca_w_system", """{"system": "Be brief.", "instruction": "Why?", "output": "Because."}""",
        "SYSTEM: Be brief.\nUSER: Why?\nASSISTANT:", "Because.")]
    [InlineData("context_qa", """{"article": "Cats purr.", "question": "What do cats do?", "answer": "Purr."}""",
        "SYSTEM: Use the following contextual information to concisely answer the question.\n\nUSER: Cats purr.\n===\nWhat do cats do?\nASSISTANT:", "Purr.")]
    [InlineData("context_qa.load_v2", """{"context": "Cats purr.", "question": "What do cats do?", "answer": "Purr."}""",
        "Context: Cats purr.\nQuestion: What do cats do?\n", "Answer: Purr.")]
    public void Variants(string type, string json, string prompt, string response) => AssertInstruction(Run(type, json), prompt, response);

    [Fact]
    public void Metharme_appends_three_eos()
    {
        AssertInstruction(Run("metharme", """{"prompt": "<|user|>Hi<|model|>", "generation": "Hello"}"""), "<|user|>Hi<|model|>", "Hello", eosCount: 3);
    }

    [Fact]
    public void Reflection_trains_on_the_whole_labelled_answer_and_keeps_eos()
    {
        var e = Run("reflection", """{"instruction": "Plan", "output": "O", "reflection": "R", "corrected": "C"}""");
        const string system = "Below is an instruction that describes a task. You, the Assistant, should generate a response as if it were an abstract for an academic or technical paper on the query along with a methodology. Then generate an Agent Reflection where you create a long form response as if from subject matter expert, be verbose, diligent, and creative in your application of knowledge, apply it through the lens of the response generated by the assistant. Look for flawed reasoning, faulty logic, or other mistakes in the method. Finally, generate a final response and method for the user with the Assistant abstract and Reflection analysis as augmentations to the generation\n\n";
        var prompt = system + "### Instruction:\nPlan\n\n### Response:\n";
        var full = Llama2.Encode(prompt + "### Thought:\nO\n\n### Agent Reflection:\nR\n\n### Final Response:\nC").Append(Eos).ToArray();
        Assert.Equal(full, e.InputIds);
        int masked = Llama2.Encode(prompt).Count;
        Assert.Equal(Enumerable.Repeat(-100, masked).Concat(full.Skip(masked)), e.Labels);
    }

    [Fact]
    public void Train_on_inputs_trains_the_prompt_too()
    {
        var e = Run("alpaca:chat", AlpacaNoInput, trainOnInputs: true);
        Assert.Equal(e.InputIds, e.Labels);
    }

    [Fact]
    public void Input_output_segments_are_masked_by_label_without_special_tokens()
    {
        var e = Run("input_output", """{"segments": [{"text": "<s>Q: hi\n", "label": false}, {"text": "A: hello", "label": true}, {"text": "\n", "label": false}]}""");
        var a = Llama2.Encode("<s>Q: hi\n", addSpecialTokens: false);
        var b = Llama2.Encode("A: hello", addSpecialTokens: false);
        var c = Llama2.Encode("\n", addSpecialTokens: false);
        Assert.Equal(a.Concat(b).Concat(c), e.InputIds);
        Assert.Equal(Enumerable.Repeat(-100, a.Count).Concat(b).Concat(Enumerable.Repeat(-100, c.Count)), e.Labels);
        Assert.Equal(Bos, e.InputIds[0]); // the literal <s> in the text, not an added one
        Assert.DoesNotContain(Eos, e.InputIds); // nothing is appended
    }

    [Fact]
    public void User_defined_formats_use_the_rows_system_or_the_system_prompt()
    {
        var config = Axolotl.Config.ConfigLoader.Parse("""
            base_model: m
            learning_rate: 0.001
            datasets:
              - path: d.jsonl
                type:
                  system_prompt: "You are kind."
                  system_format: "<sys>{system}</sys>\n"
                  field_instruction: q
                  field_input: ctx
                  field_output: a
                  format: "Q: {instruction} [{input}]\nA: "
                  no_input_format: "Q: {instruction}\nA: "
            """, "cfg.yml");
        var strategy = PromptStrategies.For(config.Datasets[0], new StrategyContext(() => Llama2, 2048, false));
        AssertInstruction(strategy.Tokenize(RowOf("""{"q": "Why {input}?", "ctx": "sky", "a": "Light."}""")).Single(), "<sys>You are kind.</sys>\nQ: Why {input}? [sky]\nA: ", "Light.");
        AssertInstruction(strategy.Tokenize(RowOf("""{"q": "Why?", "a": "Light.", "system": "Be terse."}""")).Single(), "<sys>Be terse.</sys>\nQ: Why?\nA: ", "Light.");
        Assert.Contains("type: {", Axolotl.Config.ConfigWriter.ToYaml(config).Replace("type: {\"system_prompt\"", "type: {"));
    }

    [Fact]
    public void User_defined_defaults_are_axolotls()
    {
        var d = new DatasetConfig { Path = "x" };
        typeof(DatasetConfig).GetProperty(nameof(DatasetConfig.UserDefined))!.SetValue(d, new UserDefinedFormat());
        var e = PromptStrategies.For(d, new StrategyContext(() => Llama2, 2048, false)).Tokenize(RowOf("""{"instruction": "Hi", "input": "there", "output": "Yo"}""")).Single();
        AssertInstruction(e, "Hi there ", "Yo");
    }

    [Fact]
    public void Completion_chunks_at_sequence_len_and_trains_everything()
    {
        var d = new DatasetConfig { Path = "x", Type = "completion", Field = "body" };
        var text = string.Join(" ", Enumerable.Range(0, 40).Select(i => $"word{i}"));
        var chunks = PromptStrategies.For(d, new StrategyContext(() => Llama2, 32, false)).Tokenize(RowOf($$"""{"body": "{{text}}"}""")).ToList();
        var all = Llama2.Encode(text).Append(Eos).ToArray();
        Assert.Equal(all, chunks.SelectMany(c => c.InputIds));
        Assert.All(chunks.SkipLast(1), c => Assert.Equal(32, c.InputIds.Length));
        Assert.All(chunks, c => Assert.Equal(c.InputIds, c.Labels));
    }

    [Fact]
    public void Missing_and_mistyped_fields_name_file_line_and_field()
    {
        var e = Assert.Throws<BadRowError>(() => Run("jeopardy", """{"question": "Q", "answer": "A"}"""));
        Assert.Equal(("missing field", "data.jsonl, line 3: missing field 'category'."), (e.Reason, e.Message));
        var w = Assert.Throws<BadRowError>(() => Run("alpaca", """{"instruction": 3, "output": "A"}"""));
        Assert.Equal(("wrong type", "data.jsonl, line 3: field 'instruction' must be a string."), (w.Reason, w.Message));
    }
}
