using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

/// <summary>Axolotl's alpaca format: prompt text, masking, BOS/EOS handling (prompt_tokenizers.py, prompters.py).</summary>
public class AlpacaTests
{
    static readonly Tokenizer Llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));

    static Row RowOf(string json) => new(JsonNode.Parse(json)!.AsObject(), "data.json", 1);

    /// <summary>The registry's strategy for <c>type: alpaca</c>, as a config names it.</summary>
    static IPromptStrategy Alpaca(int sequenceLen, bool trainOnInputs) =>
        PromptStrategies.For(new Axolotl.Config.DatasetConfig { Type = "alpaca" }, new StrategyContext(() => Llama2, sequenceLen, trainOnInputs));

    [Fact]
    public void Prompt_text_is_axolotls_with_and_without_input()
    {
        Assert.Equal(
            "Below is an instruction that describes a task, paired with an input that provides further context. " +
            "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd\n\n### Input:\n2 3\n\n### Response:\n",
            AlpacaPrompt.Instruct("Add", "2 3"));
        Assert.Equal(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
            "### Instruction:\nAdd\n\n### Response:\n",
            AlpacaPrompt.Instruct("Add", ""));
    }

    [Fact]
    public void Response_boundary_matches_axolotls_test_alpaca()
    {
        // axolotl tests/test_prompt_tokenizers.py::test_alpaca, with the same LLaMA vocabulary: "▁Hi" is 6324.
        var example = Alpaca(2048, false).Tokenize(RowOf("""{"instruction": "hello!", "output": "Hi! How can I help?"}""")).Single();
        int hi = Array.IndexOf(example.InputIds, 6324);
        Assert.True(hi > 0);
        Assert.Equal(6324, example.Labels[hi]);
        Assert.Equal(-100, example.Labels[hi - 1]);
    }

    [Fact]
    public void Prompt_is_masked_response_keeps_no_bos_and_ends_with_eos()
    {
        var row = RowOf("""{"instruction": "Name a colour.", "input": "", "output": "Blue."}""");
        var example = Alpaca(512, false).Tokenize(row).Single();
        var prompt = Llama2.Encode(AlpacaPrompt.Instruct("Name a colour.", ""));
        var response = Llama2.Encode("Blue.", addSpecialTokens: false);
        Assert.Equal(1, prompt[0]); // BOS from the Llama-2 post-processor
        Assert.Equal([.. prompt, .. response, 2], example.InputIds);
        Assert.Equal([.. Enumerable.Repeat(-100, prompt.Count), .. response, 2], example.Labels);
    }

    [Fact]
    public void Train_on_inputs_trains_every_token()
    {
        var row = RowOf("""{"instruction": "Say hi", "output": "hi"}""");
        var example = Alpaca(512, true).Tokenize(row).Single();
        Assert.Equal(example.InputIds, example.Labels);
    }

    [Fact]
    public void Missing_fields_name_the_row()
    {
        var strategy = Alpaca(512, false);
        var e = Assert.ThrowsAny<UserError>(() => strategy.Tokenize(RowOf("""{"prompt": "x", "output": "y"}""")).ToList());
        Assert.Equal("data.json, row 1: missing field 'instruction'.", e.Message);
        e = Assert.ThrowsAny<UserError>(() => strategy.Tokenize(RowOf("""{"instruction": "x", "output": 5}""")).ToList());
        Assert.Contains("'output' must be a string", e.Message);
    }

    [Fact]
    public void Completion_trains_all_tokens_in_sequence_len_chunks_with_eos_at_the_end()
    {
        var text = string.Join(" ", Enumerable.Range(0, 200).Select(i => $"word{i}"));
        var chunks = new Completion(Llama2, 64, "text").Tokenize(RowOf($$"""{"text": "{{text}}"}""")).ToList();
        var all = chunks.SelectMany(c => c.InputIds).ToArray();
        Assert.Equal([.. Llama2.Encode(text), 2], all);
        Assert.All(chunks.SkipLast(1), c => Assert.Equal(64, c.InputIds.Length));
        Assert.All(chunks, c => Assert.Equal(c.InputIds, c.Labels));
    }
}
