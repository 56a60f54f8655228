using System.Text.Json;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>GPT-2 byte-level BPE (tok-gpt2/tokenizer.json, merges as [a, b] pairs) and the tiny 512-token cut of it.</summary>
public class Gpt2TokenizerTests
{
    [Fact]
    public void Encodes_a_rust_source_file_exactly_like_the_recorded_gpt2_ids()
    {
        // dotnet/machinelearning Data/tokens_gpt2.json: GPT-2 ids of Data/lib.rs.txt with every '\r' removed.
        var text = File.ReadAllText(TokFixtures.Data("ref-tokenizer", "dotnet-ml", "lib.rs.txt")).Replace("\r", "");
        var expected = JsonSerializer.Deserialize<int[]>(File.ReadAllText(TokFixtures.Data("ref-tokenizer", "dotnet-ml", "tokens_gpt2.json")))!;
        Assert.Equal(11378, expected.Length);

        var ids = TokFixtures.Gpt2.Encode(text);
        Assert.Equal(expected, ids);
        Assert.Equal(text, TokFixtures.Gpt2.Decode(ids));
    }

    /// <summary>
    /// dotnet/machinelearning test/Microsoft.ML.GenAI.Phi.Tests/Approvals/Phi2Tests.TokenizerTest.approved.txt
    /// (cd2fbd617c13bcb98ec8b6554bfa20ac603e4572), without the BOS that test prepends (Phi-2 uses GPT-2's vocabulary
    /// and merges), and onnxruntime-extensions test_tokenizer_impl.cc CodeGenTokenizerTrailingChar (phi-2, "HF tokenizers produces").
    /// </summary>
    public static TheoryData<string, int[]> RecordedCases => new()
    {
        { "Can you provide ways to eat combinations of bananas and dragonfruits?", [6090, 345, 2148, 2842, 284, 4483, 17790, 286, 35484, 290, 10441, 69, 50187, 30] },
        { "Sure! Here are some ways to eat bananas and dragonfruits together: 1. Banana and dragonfruit smoothie: Blend bananas and dragonfruits together with some milk and honey. 2. Banana and dragonfruit salad: Mix sliced bananas and dragonfruits together with some lemon juice and honey.",
            [19457, 0, 3423, 389, 617, 2842, 284, 4483, 35484, 290, 10441, 69, 50187, 1978, 25, 352, 13, 40058, 290, 10441, 34711, 7209, 494, 25, 41198, 35484, 290, 10441, 69, 50187, 1978, 351, 617, 7545, 290, 12498, 13, 362, 13, 40058, 290, 10441, 34711, 20698, 25, 15561, 26790, 35484, 290, 10441, 69, 50187, 1978, 351, 617, 18873, 13135, 290, 12498, 13] },
        { "What about solving an 2x + 3 = 7 equation?", [2061, 546, 18120, 281, 362, 87, 1343, 513, 796, 767, 16022, 30] },
        { "return n", [7783, 299] },
        { " n", [299] },
        { "abc x", [39305, 2124] },
    };

    [Theory, MemberData(nameof(RecordedCases))]
    public void Encode_matches_recorded_ids(string text, int[] expected)
    {
        Assert.Equal(expected, TokFixtures.Gpt2.Encode(text)); // the ByteLevel post-processor adds nothing
        Assert.Equal(expected, TokFixtures.Gpt2.Encode(text, addSpecialTokens: false));
        Assert.Equal(text, TokFixtures.Gpt2.Decode(expected));
    }

    [Fact]
    public void Special_tokens_and_vocabulary()
    {
        var tok = TokFixtures.Gpt2;
        Assert.Equal(50257, tok.VocabSize);
        Assert.Equal(("<|endoftext|>", 50256), (tok.EosToken, tok.EosTokenId));
        Assert.Equal(("<|endoftext|>", 50256), (tok.BosToken, tok.BosTokenId));
        Assert.Null(tok.PadToken);
        Assert.Equal("Ġthe", tok.IdToToken(262));
    }

    [Fact]
    public void Endoftext_is_split_out_and_swallows_surrounding_spaces()
    {
        // <|endoftext|> is lstrip/rstrip/single_word in tokenizer.json: the spaces around it belong to it, and
        // it is only recognised when no word character touches it.
        var tok = TokFixtures.Gpt2;
        var expected = tok.Encode("Hello").Concat([50256]).Concat(tok.Encode("world")).ToArray();
        Assert.Equal(expected, tok.Encode("Hello <|endoftext|> world"));
        Assert.Equal(expected, tok.Encode("Hello  <|endoftext|>\nworld"));
        Assert.DoesNotContain(50256, tok.Encode("Hello<|endoftext|>world"));
        Assert.Equal("Hello<|endoftext|>world", tok.Decode(expected));
        Assert.Equal("Helloworld", tok.Decode(expected, skipSpecialTokens: true));
    }

    [Theory]
    [InlineData("Hello world")]
    [InlineData("  leading, trailing and   inner   spaces  ")]
    [InlineData("Tabs\tand\nnewlines\r\n\n\nmany\n")]
    [InlineData("Ünïcödé: naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어, العربية")]
    [InlineData("Emoji 👍🏽 👨‍👩‍👧 🤗 and symbols ∑ ≠ ∞ ™ © \u00A0nbsp \u2003em space")]
    [InlineData("It's, they're, we've, I'm, you'll, he'd, 'quoted' ''double''")]
    [InlineData("Astral letters 𝐀𝐁𝐂 and CJK ext-B 𠀀𠀁 digits ١٢٣ ½")]
    public void Round_trips(string text)
    {
        Assert.Equal(text, TokFixtures.Gpt2.Decode(TokFixtures.Gpt2.Encode(text)));
        Assert.Equal(text, TokFixtures.Tiny512.Decode(TokFixtures.Tiny512.Encode(text)));
    }

    [Fact]
    public void Tiny512_splits_chatml_tokens_and_never_exceeds_its_vocabulary()
    {
        var tok = TokFixtures.Tiny512;
        Assert.Equal(512, tok.VocabSize);
        Assert.Equal((509, 509, 509), (tok.BosTokenId!.Value, tok.EosTokenId!.Value, tok.PadTokenId!.Value));
        var ids = tok.Encode("<|im_start|>user\nHi there<|im_end|>\n");
        Assert.Equal(510, ids[0]);
        Assert.Equal(tok.Encode("user\nHi there").Concat([511]).Concat(tok.Encode("\n")), ids.Skip(1));
        Assert.All(tok.Encode("Some longer English text, with punctuation! And 12345 numbers."), id => Assert.InRange(id, 0, 508));
        Assert.Equal("user\nHi there\n", tok.Decode(ids, skipSpecialTokens: true));
    }
}
