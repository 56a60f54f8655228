using System.Text.Json.Nodes;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>Loading errors, tokenizer_config.json handling, thread safety and speed.</summary>
public class TokenizerLoadingTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("axolotl-tok-").FullName;
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    /// <summary>A copy of a fixture folder with tokenizer.json and tokenizer_config.json edited.</summary>
    string CopyOf(string fixture, Action<JsonObject>? editTokenizer = null, Action<JsonObject>? editConfig = null)
    {
        foreach (var file in Directory.GetFiles(TokFixtures.Data(fixture)))
            File.Copy(file, Path.Combine(_dir, Path.GetFileName(file)), overwrite: true);
        Edit("tokenizer.json", editTokenizer);
        Edit("tokenizer_config.json", editConfig);
        return _dir;

        void Edit(string name, Action<JsonObject>? edit)
        {
            if (edit is null) return;
            var path = Path.Combine(_dir, name);
            var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            edit(json);
            File.WriteAllText(path, json.ToJsonString());
        }
    }

    [Fact]
    public void Missing_folder_is_a_user_error_naming_it()
    {
        var missing = Path.Combine(_dir, "nope");
        var e = Assert.Throws<UserError>(() => Tokenizer.FromFolder(missing));
        Assert.Contains(missing, e.Message);
    }

    [Fact]
    public void Missing_tokenizer_json_is_a_user_error_naming_it()
    {
        var e = Assert.Throws<UserError>(() => Tokenizer.FromFolder(_dir));
        Assert.Contains(Path.Combine(_dir, "tokenizer.json"), e.Message);
    }

    [Theory]
    [InlineData("tokenizer.json")]
    [InlineData("tokenizer_config.json")]
    public void Invalid_json_is_a_user_error_naming_the_file(string name)
    {
        CopyOf("tok-tiny512");
        File.WriteAllText(Path.Combine(_dir, name), "{ \"model\": ");
        var e = Assert.Throws<UserError>(() => Tokenizer.FromFolder(_dir));
        Assert.Contains(Path.Combine(_dir, name), e.Message);
    }

    [Theory]
    [InlineData("model", """{ "type": "WordPiece", "vocab": {}, "unk_token": "[UNK]" }""", "WordPiece")]
    [InlineData("model", """{ "type": "Unigram", "vocab": [] }""", "Unigram")]
    [InlineData("pre_tokenizer", """{ "type": "BertPreTokenizer" }""", "BertPreTokenizer")]
    [InlineData("pre_tokenizer", """{ "type": "Split", "pattern": { "Regex": "(?<=" }, "behavior": "Isolated", "invert": false }""", "(?<=")]
    [InlineData("pre_tokenizer", """{ "type": "Split", "pattern": { "Regex": "a" }, "behavior": "Sideways", "invert": false }""", "Sideways")]
    [InlineData("normalizer", """{ "type": "BertNormalizer" }""", "BertNormalizer")]
    [InlineData("normalizer", """{ "type": "Precompiled", "precompiled_charsmap": "" }""", "Precompiled")]
    [InlineData("decoder", """{ "type": "WordPiece", "prefix": "##", "cleanup": true }""", "WordPiece")]
    [InlineData("post_processor", """{ "type": "Bogus" }""", "Bogus")]
    public void Unsupported_components_are_user_errors_naming_them_and_the_file(string part, string json, string named)
    {
        CopyOf("tok-tiny512", editTokenizer: t => t[part] = JsonNode.Parse(json));
        var e = Assert.Throws<UserError>(() => Tokenizer.FromFolder(_dir));
        Assert.Contains(named, e.Message);
        Assert.Contains(Path.Combine(_dir, "tokenizer.json"), e.Message);
    }

    [Fact]
    public void Merges_may_be_given_as_strings_or_as_pairs()
    {
        CopyOf("tok-tiny512", editTokenizer: t =>
        {
            var merges = t["model"]!["merges"]!.AsArray().Select(m => (JsonNode?)JsonValue.Create($"{m![0]} {m[1]}")).ToArray();
            t["model"]!["merges"] = new JsonArray(merges);
        });
        var legacy = Tokenizer.FromFolder(_dir);
        const string text = "The quick brown fox jumps over the lazy dog, then the other one.";
        Assert.Equal(TokFixtures.Tiny512.Encode(text), legacy.Encode(text));
        Assert.True(TokFixtures.Tiny512.Encode(text).Count < text.Length); // merges were applied
    }

    [Fact]
    public void Add_eos_token_in_the_config_appends_eos()
    {
        // LlamaTokenizerFast rebuilds its template from add_bos_token/add_eos_token.
        var tok = Tokenizer.FromFolder(CopyOf("tok-llama2", editConfig: c => c["add_eos_token"] = true));
        var plain = TokFixtures.Llama2.Encode("Hello, world!", addSpecialTokens: false);
        Assert.Equal(new[] { 1 }.Concat(plain).Append(2), tok.Encode("Hello, world!"));
        Assert.Equal(plain, tok.Encode("Hello, world!", addSpecialTokens: false));
    }

    [Fact]
    public void Add_bos_token_false_in_the_config_drops_bos()
    {
        var tok = Tokenizer.FromFolder(CopyOf("tok-llama2", editConfig: c => c["add_bos_token"] = false));
        Assert.Equal(TokFixtures.Llama2.Encode("Hello", addSpecialTokens: false), tok.Encode("Hello"));
    }

    [Fact]
    public void Special_tokens_missing_from_the_vocabulary_are_added_like_transformers_does()
    {
        var tok = Tokenizer.FromFolder(CopyOf("tok-llama2", editConfig: c => c["pad_token"] = "<pad>"));
        Assert.Equal(("<pad>", 32000), (tok.PadToken, tok.PadTokenId));
        Assert.Equal(32001, tok.VocabSize);
        Assert.Equal([1, 32000], tok.Encode("<pad>"));
        Assert.Equal("", tok.Decode([1, 32000], skipSpecialTokens: true));
    }

    [Fact]
    public void Clean_up_tokenization_spaces_is_honoured()
    {
        var tok = Tokenizer.FromFolder(CopyOf("tok-gpt2", editConfig: c => c["clean_up_tokenization_spaces"] = true));
        var ids = TokFixtures.Gpt2.Encode("Hello , world !");
        Assert.Equal("Hello , world !", TokFixtures.Gpt2.Decode(ids));
        Assert.Equal("Hello, world!", tok.Decode(ids));
    }

    [Fact]
    public void Encode_is_thread_safe()
    {
        var lines = File.ReadAllLines(TokFixtures.Data("ref-tokenizer", "dotnet-ml", "lib.rs.txt"));
        foreach (var tok in new[] { TokFixtures.Llama2, TokFixtures.Gpt2 })
        {
            var sequential = lines.Select(l => tok.Encode(l).ToArray()).ToArray();
            var parallel = new int[lines.Length][];
            Parallel.For(0, lines.Length * 4, i => parallel[i % lines.Length] = tok.Encode(lines[i % lines.Length]).ToArray());
            Assert.Equal(sequential, parallel);
        }
    }
}
