using System.Text.Json;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>
/// Folders with a SentencePiece tokenizer.model and no tokenizer.json, converted as transformers' LlamaConverter does
/// (what AutoTokenizer with use_fast does for them): Llama-2's must agree with Llama-2's published tokenizer.json, and
/// the Mistral models with ids recorded from Mistral's SentencePiece models.
/// </summary>
public class SentencePieceTokenizerTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("axolotl-spm-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    Tokenizer FromModel(string model, params string[] extraFiles)
    {
        File.Copy(model, Path.Combine(_dir, "tokenizer.model"), overwrite: true);
        foreach (var file in extraFiles) File.Copy(file, Path.Combine(_dir, Path.GetFileName(file)), overwrite: true);
        return Tokenizer.FromFolder(_dir);
    }

    [Fact]
    public void Llama2_model_converts_to_the_published_tokenizer_json()
    {
        var converted = FromModel(TokFixtures.Data("tok-llama2", "tokenizer.model"),
            TokFixtures.Data("tok-llama2", "tokenizer_config.json"), TokFixtures.Data("tok-llama2", "special_tokens_map.json"));
        using var goldens = JsonDocument.Parse(File.ReadAllText(TokFixtures.Data("tokenizer-goldens", "goldens.json")));
        var texts = goldens.RootElement.GetProperty("cases").EnumerateArray()
            .Where(c => c.GetProperty("variant").GetString() == "llama2").Select(c => c.GetProperty("text").GetString()!)
            // Only the published file marks <s> and </s> normalized=true (matched after the "▁" prefix); the converter
            // adds them normalized=false, as transformers does today. Texts holding them differ on purpose.
            .Where(t => !t.Contains("</s>") && !t.Contains("<s>"))
            .Concat(LlamaTokenizerTests.DotnetCases.Select(c => (string)c[0]))
            .Append(File.ReadAllText(TokFixtures.Data("ref-tokenizer", "dotnet-ml", "lib.rs.txt")))
            .ToList();
        Assert.True(texts.Count > 30);
        Assert.Equal(TokFixtures.Llama2.VocabSize, converted.VocabSize);
        foreach (var text in texts)
        {
            var ids = TokFixtures.Llama2.Encode(text);
            Assert.Equal(ids, converted.Encode(text));
            Assert.Equal(TokFixtures.Llama2.Decode(ids, skipSpecialTokens: true), converted.Decode(ids, skipSpecialTokens: true));
        }
    }

    /// <summary>
    /// dotnet/machinelearning LlamaTests.cs (cd2fbd617c13bcb98ec8b6554bfa20ac603e4572), the Mistral-7B-v0.1
    /// tokenizer.model cases (BOS added; the empty string left out, as there: transformers adds a BOS to it).
    /// </summary>
    public static TheoryData<string, int[]> MistralCases => new()
    {
        { "Hello, world!", [1, 22557, 28725, 1526, 28808] },
        { "The sun dipped below the horizon, casting a warm golden hue across the tranquil meadow. Birds fluttered from " +
          "tree to tree, their melodic songs filling the air. A gentle breeze rustled the leaves, carrying with it the scent of " +
          "blooming flowers. In the distance, the silhouette of a lone figure stood atop a hill, gazing out at the vast expanse " +
          "before them. It was a moment frozen in time, where nature and solitude merged into something magical.",
            [1, 415, 4376, 281, 5885, 3624, 272, 18259, 28725, 24668, 264, 6100, 13863, 295, 441, 2673, 272, 467, 20668, 309,
             528, 5547, 28723, 18213, 28713, 972, 329, 8308, 477, 4718, 298, 4718, 28725, 652, 27043, 294, 9184, 15990, 272,
             2423, 28723, 330, 10434, 24284, 14912, 1006, 272, 8049, 28725, 10839, 395, 378, 272, 21535, 302, 3449, 17846,
             11888, 28723, 560, 272, 5328, 28725, 272, 2958, 11331, 3186, 302, 264, 305, 538, 5248, 4857, 438, 410, 264,
             12254, 28725, 14961, 288, 575, 438, 272, 9555, 2365, 14788, 1159, 706, 28723, 661, 403, 264, 2470, 15199, 297,
             727, 28725, 970, 4735, 304, 2128, 4484, 22750, 778, 1545, 20927, 28723] },
        { "\nHello\n\rWorld!\n", [1, 28705, 13, 16230, 13, 28801, 11978, 28808, 13] },
        { "This is 👍, an emoji.", [1, 851, 349, 28705, 30195, 28725, 396, 877, 27813, 28723] },
    };

    [Theory, MemberData(nameof(MistralCases))]
    public void Mistral_v1_matches_recorded_ids(string text, int[] expected)
    {
        var tok = FromModel(TokFixtures.Data("tok-mistral", "tokenizer.model.v1"));
        Assert.Equal(expected, tok.Encode(text));
        Assert.Equal(text, tok.Decode(expected, skipSpecialTokens: true));
    }

    /// <summary>
    /// mistralai/mistral-common tests/data/samples (bc022b91aa1c3b1fb771ac70931ae0009dbf9bad): chat requests rendered
    /// for tokenizer v1/v2/v3 and their ids. text_vN.txt spells the pieces with "▁" and byte pieces; as text, each "▁" is a space, "text_vN.txt spells the pieces with "▁"; as text, each "▁" is a space,lt;0x0Atext_vN.txt spells the pieces with "▁"; as text, each "▁" is a space,gt;" a newline, and
    /// a space right after a control token is left out because transformers' legacy Prepend normalizer puts the "▁"
    /// back at the start of every piece between added tokens.
    /// </summary>
    [Theory]
    [InlineData("no_tools", 1, "tokenizer.model.v1")]
    [InlineData("no_tools", 2, "mistral_instruct_tokenizer_240216.model.v2")]
    [InlineData("no_tools", 3, "mistral_instruct_tokenizer_240323.model.v3")]
    [InlineData("get_weather_full", 2, "mistral_instruct_tokenizer_240216.model.v2")]
    [InlineData("get_weather_full", 3, "mistral_instruct_tokenizer_240323.model.v3")]
    [InlineData("parallel_calls", 3, "mistral_instruct_tokenizer_240323.model.v3")]
    public void Mistral_chat_samples_match_mistral_common(string sample, int version, string model)
    {
        var tok = FromModel(TokFixtures.Data("tok-mistral", model));
        var folder = TokFixtures.Data("ref-tokenizer", "mistral-common", "samples", sample);
        var text = File.ReadAllText(Path.Combine(folder, $"text_v{version}.txt")).Replace('\u2581', ' ').Replace("<0x0A>", "\n");
        foreach (var control in new[] { "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]" })
            if (tok.TokenToId(control) is { } id && tok.IdToToken(id) == control && IsAdded(tok, control)) text = text.Replace(control + " ", control);
        using var tokens = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, $"tokens_v{version}.json")));
        var expected = tokens.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(expected, tok.Encode(text, addSpecialTokens: false));
    }

    static bool IsAdded(Tokenizer tok, string token) => tok.Encode(token, addSpecialTokens: false) is [var only] && only == tok.TokenToId(token);

    [Fact]
    public void Mistral_v3_control_tokens_are_special_added_tokens()
    {
        var tok = FromModel(TokFixtures.Data("tok-mistral", "mistral_instruct_tokenizer_240323.model.v3"));
        Assert.Equal(32768, tok.VocabSize);
        var inst = tok.TokenToId("[INST]")!.Value;
        Assert.Equal([1, inst], tok.Encode("[INST]"));
        Assert.Equal("Hi", tok.Decode([1, inst, .. tok.Encode("Hi", addSpecialTokens: false)], skipSpecialTokens: true));
    }

    [Fact]
    public void A_file_that_is_neither_format_is_a_user_error_naming_it()
    {
        File.WriteAllBytes(Path.Combine(_dir, "tokenizer.model"), [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        var e = Assert.Throws<UserError>(() => Tokenizer.FromFolder(_dir));
        Assert.Contains(Path.Combine(_dir, "tokenizer.model"), e.Message);
    }
}
