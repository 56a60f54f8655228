using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

/// <summary>
/// Axolotl's own tokenized conversation (tests/fixtures/conversation.tokenized_llama2chat.json: LLama2ChatTokenizingStrategy
/// on conversation.json with the Llama-2 vocabulary, padded to 4096) reproduced by type: llama2_chat.
/// </summary>
public class Llama2ChatReferenceTests
{
    static (Example Actual, int[] Ids, int[] Labels, int Real) Run()
    {
        // The reference's Llama-2 tokenizer matched <s>/</s> in raw text (normalized=false); tok-phi3/phi-3 does, over the
        // same vocabulary (tok-llama2's special tokens are normalized and would spell " </s><s>" differently).
        var tokenizer = Tokenizer.FromFolder(TestSetup.Data("tok-phi3", "phi-3"));
        var row = new Row(JsonNode.Parse(File.ReadAllText(TestSetup.Data("ref-tokenizer", "axolotl", "conversation.json")))!.AsObject(), "conversation.json", 1);
        var expected = JsonNode.Parse(File.ReadAllText(TestSetup.Data("ref-tokenizer", "axolotl", "conversation.tokenized_llama2chat.json")))!;
        var ids = expected["input_ids"]!.AsArray().Select(x => (int)x!).ToArray();
        var labels = expected["labels"]!.AsArray().Select(x => (int)x!).ToArray();
        int real = expected["attention_mask"]!.AsArray().Count(x => (bool)x!);
        var example = PromptStrategies.For(new DatasetConfig { Path = "x", Type = "llama2_chat" }, new StrategyContext(() => tokenizer, 4096, false)).Tokenize(row).Single();
        return (example, ids, labels, real);
    }

    [Fact]
    public void The_first_exchange_matches_axolotls_ids()
    {
        // Up to the first " </s><s>" separator: BOS, the default system prompt, the question, the answer; a break here
        // points at the first turn's template or tokenization. The whole row, labels included, is the next test.
        var (example, ids, _, _) = Run();
        int firstEos = Array.IndexOf(ids, 2) - 1; // stop before the ▁ that the separator starts with
        Assert.True(firstEos > 200);
        Assert.Equal(ids[..firstEos], example.InputIds[..firstEos]);
    }

    [Fact]
    public void Axolotls_llama2_chat_ids_and_labels_are_reproduced()
    {
        var (example, ids, labels, real) = Run();
        Assert.Equal(ids[..real], example.InputIds);
        Assert.Equal(labels[..real], example.Labels);
        // Axolotl pads to sequence_len with id 0, never trained; here the collator pads.
        Assert.All(ids[real..], id => Assert.Equal(0, id));
        Assert.All(labels[real..], l => Assert.Equal(-100, l));
    }
}
