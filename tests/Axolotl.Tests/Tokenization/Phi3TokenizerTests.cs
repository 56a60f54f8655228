using System.Text;
using System.Text.Json;

namespace Axolotl.Tests.Tokenization;

/// <summary>
/// Phi-3 tokenizers (Llama-2 vocabulary plus chat tokens stored with normalized=false): added tokens in the text,
/// rstrip, and add_bos_token from tokenizer_config.json.
/// </summary>
public class Phi3TokenizerTests
{
    /// <summary>
    /// The onnxruntime-extensions phi-3 variant (add_bos_token=true, no rstrip). Sources: dotnet/machinelearning
    /// Phi3Tests.TokenizerTest.approved.txt (cd2fbd617c13bcb98ec8b6554bfa20ac603e4572), cases 1-7 of 8, and
    /// onnxruntime-extensions test_tokenizer_impl.cc Phi3Tokenizer (319f8d2c02c4e2f013129bea52e70e75ba79bbcf).
    /// Left out: the dotnet case "&lt;|user|&gt;\nCount to 3&lt;|end|&gt;\n&lt;|assistant|&gt;", recorded with
    /// SentencePiece-style handling that adds no "▁" after &lt;|end|&gt;; tokenizers' Prepend normalizer runs on each
    /// piece between added tokens, so transformers gives 29871 before that 13.
    /// </summary>
    public static TheoryData<string, int[]> Phi3Cases => new()
    {
        { "Can you provide ways to eat combinations of bananas and dragonfruits?", [1, 1815, 366, 3867, 5837, 304, 17545, 18240, 310, 9892, 16397, 322, 8338, 265, 29888, 21211, 29973] },
        { "What about solving an 2x + 3 = 7 equation?", [1, 1724, 1048, 17069, 385, 29871, 29906, 29916, 718, 29871, 29941, 353, 29871, 29955, 6306, 29973] },
        { "\nCount to 3\n", [1, 29871, 13, 3981, 304, 29871, 29941, 13] },
        { "<|user|>", [1, 32010] },
        { "<|end|>", [1, 32007] },
        { "<|assistant|>", [1, 32001] },
        { "分析", [1, 29871, 30748, 233, 161, 147] },
        { " こんにちは", [1, 259, 30589, 30389, 30353, 30644, 30449] },
        { "<|user|>\nこんにちは。データ分析するにはなにをすればいい？<|end|><|assistant|>",
            [1, 32010, 29871, 13, 30589, 30389, 30353, 30644, 30449, 30267, 30597, 30185, 30369, 30748, 233, 161, 147, 30427, 30332, 30353, 30449, 30371, 30353, 30396, 30427, 30553, 31254, 30298, 30298, 30882, 32007, 32001] },
    };

    [Theory, MemberData(nameof(Phi3Cases))]
    public void Phi3_variant_matches_recorded_ids(string text, int[] expected)
    {
        Assert.Equal(expected, TokFixtures.Phi3.Encode(text));
        Assert.Equal(expected.Skip(1), TokFixtures.Phi3.Encode(text, addSpecialTokens: false));
    }

    [Fact]
    public void Phi3_mini_chat_tokens_eat_the_newline_after_them()
    {
        // onnxruntime-extensions test_tokenizer_chat.cc Phi3MiniChatTemplate (data/phi-3-mini = tok-phi3): the rendered
        // chat template and its ids. tok-phi3 sets add_bos_token=false, so no <s> comes first.
        const string text = "<|system|>\nSystem message<|end|>\n<|user|>\nHello, can you call some tools for me?<|end|>\n"
                            + "<|assistant|>\nSure, I can calculate the sum for you!<|end|>\n<|assistant|>\n";
        int[] expected = [32006, 2184, 2643, 32007, 32010, 15043, 29892, 508, 366, 1246, 777, 8492, 363, 592, 29973, 32007, 32001,
                          18585, 29892, 306, 508, 8147, 278, 2533, 363, 366, 29991, 32007, 32001];
        Assert.Equal(expected, TokFixtures.Phi3Mini.Encode(text));
        Assert.Equal(expected, TokFixtures.Phi3Mini.Encode(text, addSpecialTokens: false));
    }

    [Fact]
    public void Special_tokens_and_vocabulary()
    {
        var tok = TokFixtures.Phi3Mini;
        Assert.Equal(32011, tok.VocabSize);
        Assert.Equal(("<s>", 1), (tok.BosToken, tok.BosTokenId));
        Assert.Equal(("<|endoftext|>", 32000), (tok.EosToken, tok.EosTokenId));
        Assert.Equal(("<|endoftext|>", 32000), (tok.PadToken, tok.PadTokenId));
        Assert.Equal("<|user|>", tok.IdToToken(32010));
        // </s> is an added token but not a special one in Phi-3-mini, so skipping special tokens keeps it.
        Assert.Equal("Hi</s>", tok.Decode([tok.TokenToId("<|user|>")!.Value, 6324, 2], skipSpecialTokens: true));
    }

    [Fact]
    public void Axolotl_llama2_chat_conversation_matches_the_recorded_input_ids()
    {
        // axolotl tests/fixtures/conversation.tokenized_llama2chat.json (067b021c8b87a9e5e380b9173c704cf7340e30f5):
        // LLama2ChatTokenizingStrategy on conversation.json with a Llama-2 tokenizer whose <s>/</s> are matched in raw text.
        // The phi-3 variant has exactly that (normalized=false, add_bos_token=true) over the same vocabulary. The prompt is
        // rebuilt as Llama2ChatConversation.get_prompt does, and axolotl's own fix-up of the ids (29961 "[" -> 518 "▁[")
        // is applied, as tokenize_prompt does before returning.
        using var conversation = JsonDocument.Parse(File.ReadAllText(TokFixtures.Data("ref-tokenizer", "axolotl", "conversation.json")));
        using var recorded = JsonDocument.Parse(File.ReadAllText(TokFixtures.Data("ref-tokenizer", "axolotl", "conversation.tokenized_llama2chat.json")));
        var messages = conversation.RootElement.GetProperty("conversations").EnumerateArray()
            .Select(m => (Role: m.GetProperty("from").GetString() == "human" ? "[INST]" : "[/INST]", Text: m.GetProperty("value").GetString()!))
            .ToList();

        const string system = "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
            + "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
            + "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
            + "If a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. "
            + "If you don't know the answer to a question, please don't share false information.\n<</SYS>>\n\n";
        string[] separators = [" ", " </s><s>"];
        var prompt = new StringBuilder();
        for (int i = 0; i < messages.Count; i++)
        {
            var (role, text) = messages[i];
            if (i == messages.Count - 1 && role == "[INST]") break;
            if (i == 0) prompt.Append(system).Append(text.Trim());
            else prompt.Append(role).Append(' ').Append(text.Trim()).Append(separators[i % 2]);
        }

        var attention = recorded.RootElement.GetProperty("attention_mask").EnumerateArray().Count(e => e.ValueKind == System.Text.Json.JsonValueKind.True);
        var expected = recorded.RootElement.GetProperty("input_ids").EnumerateArray().Take(attention).Select(e => e.GetInt32()).ToArray();
        var ids = TokFixtures.Phi3.Encode(prompt.ToString()).ToArray();
        for (int i = 2; i < ids.Length - 2; i++) if (ids[i] == 29961) ids[i] = 518;
        Assert.Equal(expected.Length, ids.Length);
        Assert.Equal(expected, ids);
    }
}
