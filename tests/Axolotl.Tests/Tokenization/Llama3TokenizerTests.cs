using System.Text.Json;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>
/// Llama-3 (byte-level BPE, 128000 ranks, the Split regex pre-tokenizer) against ids recorded by other projects, both
/// from the rebuilt tokenizer.json (<see cref="TokFixtures.Llama3"/>) and from Meta's tiktoken tokenizer.model
/// converted as transformers does (<see cref="TokFixtures.Llama3Tiktoken"/>).
/// </summary>
public class Llama3TokenizerTests
{
    public static TheoryData<string> Which => new() { "tokenizer.json", "tiktoken" };
    static Tokenizer Get(string which) => which == "tiktoken" ? TokFixtures.Llama3Tiktoken : TokFixtures.Llama3;

    /// <summary>
    /// dotnet/machinelearning LLaMA3_1Tests.TokenizerTest.approved.txt (cd2fbd617c13bcb98ec8b6554bfa20ac603e4572; Llama-3.1,
    /// no BOS added), ollama bytepairencoding_test.go TestLlama (fb30760996871fa9460115c753afd2c60d4ab0f7; Llama-3.2,
    /// no BOS added) and meta-llama/llama-models test_tokenizer.py (a9c89c471f793423afd4cc3ca8671d6e56fe64cb; the message
    /// and dialog encodings are written here as the text they render to).
    /// </summary>
    public static TheoryData<string, string, int[]> RecordedCases()
    {
        var data = new TheoryData<string, string, int[]>();
        (string, int[])[] cases =
        [
            ("Can you provide ways to eat combinations of bananas and dragonfruits?", [6854, 499, 3493, 5627, 311, 8343, 28559, 315, 68442, 323, 26161, 1658, 12059, 30]),
            ("Sure! Here are some ways to eat bananas and dragonfruits together: 1. Banana and dragonfruit smoothie: Blend bananas and dragonfruits together with some milk and honey. 2. Banana and dragonfruit salad: Mix sliced bananas and dragonfruits together with some lemon juice and honey.",
                [40914, 0, 5810, 527, 1063, 5627, 311, 8343, 68442, 323, 26161, 1658, 12059, 3871, 25, 220, 16, 13, 76924, 323, 26161, 36698, 11113, 648, 25, 55248, 68442, 323, 26161, 1658, 12059, 3871, 449, 1063, 14403, 323, 26828, 13, 220, 17, 13, 76924, 323, 26161, 36698, 33566, 25, 19771, 48715, 68442, 323, 26161, 1658, 12059, 3871, 449, 1063, 30564, 23661, 323, 26828, 13]),
            ("What about solving an 2x + 3 = 7 equation?", [3923, 922, 22581, 459, 220, 17, 87, 489, 220, 18, 284, 220, 22, 24524, 30]),
            ("<|begin_of_text|>Hello World<|end_of_text|>", [128000, 9906, 4435, 128001]),
            ("hello world", [15339, 1917]),
            ("hello <|end_of_text|>", [15339, 220, 128001]),
            ("<|begin_of_text|>A B!", [128000, 32, 426, 0]),
            ("<|begin_of_text|>A<|end_of_text|>B!", [128000, 32, 128001, 33, 0]),
            ("<|begin_of_text|>A<|end_of_text|>B<|begin_of_text|>!", [128000, 32, 128001, 33, 128000, 0]),
            ("<|begin_of_text|>A<|end_of_text|>B<|begin_of_text|>!<|end_of_text|>", [128000, 32, 128001, 33, 128000, 0, 128001]),
            ("<|begin_of_text|>This is a test sentence.<|end_of_text|>", [128000, 2028, 374, 264, 1296, 11914, 13, 128001]),
            ("<|start_header_id|>user<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>", [128006, 882, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009]),
        ];
        foreach (var which in new[] { "tokenizer.json", "tiktoken" })
            foreach (var (text, ids) in cases) data.Add(which, text, ids);
        // ollama "simple repeated": runs of zeros, cut in threes by \p{N}{1,3}.
        int[] counts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17];
        foreach (var n in counts)
        {
            var ids = Enumerable.Repeat(931, n / 3).ToList();
            if (n % 3 == 1) ids.Add(15);
            if (n % 3 == 2) ids.Add(410);
            data.Add("tokenizer.json", new string('0', n), ids.ToArray());
        }
        return data;
    }

    [Theory, MemberData(nameof(RecordedCases))]
    public void Encode_matches_recorded_ids(string which, string text, int[] expected)
    {
        Assert.Equal(expected, Get(which).Encode(text, addSpecialTokens: false));
    }

    [Theory, MemberData(nameof(Which))]
    public void Bos_comes_from_the_template_and_decode_gives_the_text_back(string which)
    {
        // llama-models test_encode/test_decode: "This is a test sentence." with BOS and EOS, and its decoding.
        var tok = Get(which);
        var plain = tok.Encode("This is a test sentence.", addSpecialTokens: false);
        Assert.Equal([2028, 374, 264, 1296, 11914, 13], plain);
        Assert.Equal("<|begin_of_text|>This is a test sentence.<|end_of_text|>", tok.Decode([128000, .. plain, 128001]));
        Assert.Equal("This is a test sentence.", tok.Decode([128000, .. plain, 128001], skipSpecialTokens: true));
        Assert.Equal(128256, tok.VocabSize);
        Assert.Equal(("<|begin_of_text|>", 128000), (tok.BosToken, tok.BosTokenId));
        Assert.Equal(131072, tok.ModelMaxLength);
    }

    [Fact]
    public void Tokenizer_json_adds_bos()
    {
        Assert.Equal([128000, 15339, 1917], TokFixtures.Llama3.Encode("hello world"));
    }

    [Theory]
    [InlineData("hello"), InlineData("hello "), InlineData("hello  "), InlineData(" hello"), InlineData(" hello "), InlineData(" hello  ")]
    [InlineData("hello world"), InlineData("请考试我的软件！12345")]
    public void Round_trips(string text)
    {
        // ollama "basic roundtrip" and every single byte (ollama "roundtriping 0x00-0xFF").
        foreach (var tok in new[] { TokFixtures.Llama3, TokFixtures.Llama3Tiktoken })
        {
            Assert.Equal(text, tok.Decode(tok.Encode(text, addSpecialTokens: false)));
            for (int b = 0; b < 256; b++)
            {
                var s = ((char)b).ToString();
                Assert.Equal(s, tok.Decode(tok.Encode(s, addSpecialTokens: false)));
            }
        }
    }

    /// <summary>ollama TestLlama "split": the pre-tokens of the Llama-3 pattern.</summary>
    [Theory]
    [InlineData("Hello World!", new[] { "Hello", " World", "!" })]
    [InlineData("I'm don't won't", new[] { "I", "'m", " don", "'t", " won", "'t" })]
    [InlineData("In 2024 there are 366 days", new[] { "In", " ", "202", "4", " there", " are", " ", "366", " days" })]
    [InlineData("Hello!! ...world", new[] { "Hello", "!!", " ...", "world" })]
    [InlineData("Hello    World", new[] { "Hello", "   ", " World" })]
    [InlineData("Hello\nWorld", new[] { "Hello", "\n", "World" })]
    [InlineData("Hello, WORLD!! How's it going?", new[] { "Hello", ",", " WORLD", "!!", " How", "'s", " it", " going", "?" })]
    public void Llama3_pattern_splits_like_the_reference(string text, string[] expected)
    {
        var split = new SplitPreTokenizer(new RegexPattern(SlowTokenizerFiles.Llama3Pattern, "test"), SplitBehavior.Isolated, invert: false);
        var pieces = new List<string>();
        split.PreTokenize(text, true, (piece, _) => pieces.Add(piece.ToString()));
        Assert.Equal(expected, pieces);
    }

    [Fact]
    public void Astral_letters_are_letters_to_the_pattern()
    {
        // Oniguruma matches code points: "𝐀𝐁" is one \p{L}+ run with the space before it, "😀" is not a letter.
        var split = new SplitPreTokenizer(new RegexPattern(SlowTokenizerFiles.Llama3Pattern, "test"), SplitBehavior.Isolated, invert: false);
        var pieces = new List<string>();
        split.PreTokenize("a 𝐀𝐁 😀x 𝟙𝟚𝟛𝟜", true, (piece, _) => pieces.Add(piece.ToString()));
        Assert.Equal(["a", " 𝐀𝐁", " 😀", "x", " ", "𝟙𝟚𝟛", "𝟜"], pieces);
    }

    [Fact]
    public void Tiktoken_conversion_matches_the_tokenizer_json_on_the_golden_texts_and_a_source_file()
    {
        using var goldens = JsonDocument.Parse(File.ReadAllText(TokFixtures.Data("tokenizer-goldens", "goldens.json")));
        var texts = goldens.RootElement.GetProperty("cases").EnumerateArray()
            .Where(c => c.GetProperty("variant").GetString() == "llama3").Select(c => c.GetProperty("text").GetString()!).ToList();
        texts.Add(File.ReadAllText(TokFixtures.Data("ref-tokenizer", "dotnet-ml", "lib.rs.txt")));
        Assert.True(texts.Count > 20);
        foreach (var text in texts)
            Assert.Equal(TokFixtures.Llama3.Encode(text, addSpecialTokens: false), TokFixtures.Llama3Tiktoken.Encode(text, addSpecialTokens: false));
    }
}
