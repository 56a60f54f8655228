using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>
/// Llama-2 (tok-llama2/tokenizer.json) against ids recorded by other projects for the same 32000-piece vocabulary.
/// All cases are with special tokens added (BOS), as transformers' LlamaTokenizerFast does by default.
/// </summary>
public class LlamaTokenizerTests
{
    const string Sun =
        "The sun dipped below the horizon, casting a warm golden hue across the tranquil meadow. Birds fluttered from " +
        "tree to tree, their melodic songs filling the air. A gentle breeze rustled the leaves, carrying with it the scent of " +
        "blooming flowers. In the distance, the silhouette of a lone figure stood atop a hill, gazing out at the vast expanse " +
        "before them. It was a moment frozen in time, where nature and solitude merged into something magical.";

    const string Bananas =
        "Sure! Here are some ways to eat bananas and dragonfruits together: 1. Banana and dragonfruit smoothie: Blend bananas and dragonfruits together with some milk and honey. 2." +
        " Banana and dragonfruit salad: Mix sliced bananas and dragonfruits together with some lemon juice and honey.";

    /// <summary>
    /// dotnet/machinelearning test/Microsoft.ML.Tokenizers.Tests/LlamaTests.cs @ cd2fbd617c13bcb98ec8b6554bfa20ac603e4572:
    /// LlamaTestData and TokenizerTestData (the Llama tokenizer.model, BOS added), and the plain-text Phi3TestData
    /// cases (same tokenizer.model, BOS added). Left out: the empty string (that test expects no BOS; transformers adds
    /// one), the Mistral cases (other vocabulary) and the treat-whitespace-as-suffix variants (no HF equivalent).
    /// </summary>
    public static TheoryData<string, int[]> DotnetCases => new()
    {
        { "Hello, world!", [1, 15043, 29892, 3186, 29991] },
        { Sun, [1, 450, 6575, 652, 2986, 2400, 278, 28205, 29892, 23013, 263, 14294, 22843, 298, 434, 4822, 278, 22024, 339, 309, 592, 6986, 29889, 17777, 29879, 20287, 287, 515, 5447, 304, 5447, 29892, 1009, 9232, 397, 293, 12516, 27523, 278, 4799, 29889, 319, 9914, 289, 929, 911, 21580, 839, 278, 11308, 29892, 19436, 411, 372, 278, 885, 296, 310, 6668, 28826, 18281, 29889, 512, 278, 5418, 29892, 278, 4047, 10774, 2353, 310, 263, 301, 650, 4377, 8389, 472, 459, 263, 17306, 29892, 12642, 292, 714, 472, 278, 13426, 1518, 12350, 1434, 963, 29889, 739, 471, 263, 3256, 14671, 2256, 297, 931, 29892, 988, 5469, 322, 899, 4279, 19412, 964, 1554, 2320, 936, 29889] },
        { "\nHello\n\rWorld!\n", [1, 29871, 13, 10994, 13, 30004, 14058, 29991, 13] },
        { "This is 👍, an emoji.", [1, 910, 338, 29871, 243, 162, 148, 144, 29892, 385, 953, 29877, 2397, 29889] },
        { "the brown fox jumped over the lazy dog!", [1, 278, 17354, 1701, 29916, 12500, 287, 975, 278, 17366, 11203, 29991] },
        { "he traveled to Egypt during the summer, the weather was hot and ammunition.", [1, 540, 1020, 345, 839, 304, 12892, 2645, 278, 11801, 29892, 278, 14826, 471, 7375, 322, 626, 24579, 654, 29889] },
        { "She played many games and she felt exhausted afterward", [1, 2296, 5318, 1784, 8090, 322, 1183, 7091, 18782, 16656, 1156, 1328] },
        { "Hello, y'all! How are you 😁 ?", [1, 15043, 29892, 343, 29915, 497, 29991, 1128, 526, 366, 29871, 243, 162, 155, 132, 1577] },
        { "Can you provide ways to eat combinations of bananas and dragonfruits?", [1, 1815, 366, 3867, 5837, 304, 17545, 18240, 310, 9892, 16397, 322, 8338, 265, 29888, 21211, 29973] },
        { Bananas, [1, 18585, 29991, 2266, 526, 777, 5837, 304, 17545, 9892, 16397, 322, 8338, 265, 29888, 21211, 4208, 29901, 29871, 29896, 29889, 10765, 1648, 322, 8338, 265, 29888, 9216, 10597, 347, 29901, 3164, 355, 9892, 16397, 322, 8338, 265, 29888, 21211, 4208, 411, 777, 27274, 322, 298, 4992, 29889, 29871, 29906, 29889, 10765, 1648, 322, 8338, 265, 29888, 9216, 4497, 328, 29901, 23478, 269, 506, 287, 9892, 16397, 322, 8338, 265, 29888, 21211, 4208, 411, 777, 454, 3712, 3623, 625, 322, 298, 4992, 29889] },
        { "What about solving an 2x + 3 = 7 equation?", [1, 1724, 1048, 17069, 385, 29871, 29906, 29916, 718, 29871, 29941, 353, 29871, 29955, 6306, 29973] },
        { "\nCount to 3\n", [1, 29871, 13, 3981, 304, 29871, 29941, 13] },
    };

    /// <summary>
    /// llama2.c test.c (plctlab/rvspoc-s2311-llama2 @ 2fa3f650cf1dc5a21e11c00a9c688be86947b061): ids taken from
    /// Meta's SentencePiece tokenizer for the Llama 2 example prompts, BOS added.
    /// </summary>
    public static TheoryData<string, int[]> Llama2cCases => new()
    {
        { "", [1] },
        { "I believe the meaning of life is", [1, 306, 4658, 278, 6593, 310, 2834, 338] },
        { "Simply put, the theory of relativity states that ", [1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871] },
        { "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
            [1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13, 4706, 6324, 14332, 29892, 13, 13, 4706, 306, 925, 29871] },
        { "Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n        plush girafe => girafe peluche\n        cheese =>",
            [1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449, 276, 316, 2778, 13, 4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318, 13, 4706, 715, 1878, 330, 3055, 1725, 1149, 330, 3055, 1725, 4639, 28754, 13, 4706, 923, 968, 1149] },
    };

    /// <summary>
    /// onnxruntime-extensions test/pp_api_test (319f8d2c02c4e2f013129bea52e70e75ba79bbcf), phi-3 tokenizer tests whose
    /// input holds no Phi-3 token, so they are Llama-2 encodings: test_tokenizer_capi.cc Phi3TokenizerBlob (generated
    /// with AutoTokenizer, per its comment; byte fallback, control characters, tabs) and test_tokenizer_impl.cc Phi3Tokenizer.
    /// </summary>
    public static TheoryData<string, int[]> OrtCases => new()
    {
        { "I like walking my cute dog\n and\x17 then, 生活的真谛是  \t\t\t\t \n\n61",
            [1, 306, 763, 22049, 590, 274, 1082, 11203, 13, 322, 26, 769, 29892, 29871, 30486, 31704, 30210, 30848, 235, 179, 158, 30392, 259, 12, 12, 12, 12, 29871, 13, 13, 29953, 29896] },
        { "分析", [1, 29871, 30748, 233, 161, 147] },
        { " こんにちは", [1, 259, 30589, 30389, 30353, 30644, 30449] },
    };

    [Theory, MemberData(nameof(DotnetCases)), MemberData(nameof(Llama2cCases)), MemberData(nameof(OrtCases))]
    public void Encode_matches_recorded_ids(string text, int[] expected)
    {
        Assert.Equal(expected, TokFixtures.Llama2.Encode(text));
        Assert.Equal(expected.Skip(1), TokFixtures.Llama2.Encode(text, addSpecialTokens: false));
    }

    [Theory, MemberData(nameof(DotnetCases)), MemberData(nameof(Llama2cCases)), MemberData(nameof(OrtCases))]
    public void Decode_of_recorded_ids_gives_the_text_back(string text, int[] ids)
    {
        Assert.Equal(text, TokFixtures.Llama2.Decode(ids, skipSpecialTokens: true));
        Assert.Equal("<s>" + (text.Length == 0 ? "" : " " + text), TokFixtures.Llama2.Decode(ids));
    }

    [Fact]
    public void Special_tokens_come_from_the_config_files()
    {
        var tok = TokFixtures.Llama2;
        Assert.Equal(("<s>", 1), (tok.BosToken, tok.BosTokenId));
        Assert.Equal(("</s>", 2), (tok.EosToken, tok.EosTokenId));
        Assert.Equal(("<unk>", 0), (tok.UnkToken, tok.UnkTokenId));
        Assert.Null(tok.PadToken); // "pad_token": null in tokenizer_config.json
        Assert.Null(tok.PadTokenId);
        Assert.Equal(32000, tok.VocabSize);
        Assert.Equal("▁Hello", tok.IdToToken(15043));
        Assert.Equal(13, tok.TokenToId("<0x0A>"));
        Assert.Null(tok.TokenToId("no such token"));
    }

    [Fact]
    public void Byte_fallback_decodes_partial_utf8_as_replacement_characters()
    {
        // tokenizers' ByteFallback decoder: a run of byte tokens that is not valid UTF-8 becomes one U+FFFD per byte.
        var a = TokFixtures.Llama2.TokenToId("a")!.Value;
        Assert.Equal("a\uFFFD\uFFFD", TokFixtures.Llama2.Decode([a, 243, 162], skipSpecialTokens: true));
        Assert.Equal("😁", TokFixtures.Llama2.Decode([243, 162, 155, 132]));
    }

    [Theory]
    [InlineData("Hello world")]
    [InlineData("  leading and trailing spaces  ")]
    [InlineData("Tabs\tand\nnewlines\r\n\n\nmany")]
    [InlineData("Ünïcödé: naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어, العربية")]
    [InlineData("Emoji 👍🏽 👨‍👩‍👧 🤗 and symbols ∑ ≠ ∞ ™ © \u00A0nbsp")]
    [InlineData("code: for (int i = 0; i < n; i++) { x[i] = y[i] * 2; }")]
    [InlineData("Astral letters 𝐀𝐁𝐂 and CJK ext-B 𠀀𠀁")]
    public void Round_trips(string text)
    {
        var tok = TokFixtures.Llama2;
        var ids = tok.Encode(text);
        Assert.Equal(1, ids[0]);
        Assert.Equal(text, tok.Decode(ids, skipSpecialTokens: true));
    }

    [Fact]
    public void Special_tokens_are_matched_in_their_normalized_form()
    {
        // tok-llama2 marks <s> and </s> normalized=true, so tokenizers looks for the normalized form "▁</s>" in the
        // normalized text: "a </s>" holds it, "a</s>" does not and is spelled out from the vocabulary instead.
        var tok = TokFixtures.Llama2;
        Assert.Equal(2, tok.Encode("a </s>", addSpecialTokens: false)[^1]);
        Assert.DoesNotContain(2, tok.Encode("a</s>", addSpecialTokens: false));
        Assert.Equal(tok.Encode("a", addSpecialTokens: false).Concat([2]), tok.Encode("a </s>", addSpecialTokens: false));
    }
}
