using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>special_tokens and tokens from the config, applied as Axolotl's load_tokenizer applies them.</summary>
public class ConfigTokensTests
{
    static Tokenizer FreshLlama2() => Tokenizer.FromFolder(TokFixtures.Data("tok-llama2"));

    [Fact]
    public void New_tokens_get_the_next_ids_and_are_matched_whole()
    {
        var tok = FreshLlama2();
        int added = ConfigTokens.Apply(tok, new Dictionary<string, string> { ["pad_token"] = "<pad>" }, null, ["<think>", "</think>", "<pad>"],
            adapter: false, loraModulesToSave: null);
        Assert.Equal(3, added);
        Assert.Equal(32003, tok.VocabSize);
        Assert.Equal(("<pad>", 32000), (tok.PadToken, tok.PadTokenId));
        Assert.Equal([32001, 32002], [tok.TokenToId("<think>")!.Value, tok.TokenToId("</think>")!.Value]);
        Assert.Equal([1, 32001, .. TokFixtures.Llama2.Encode("hi", addSpecialTokens: false), 32002], tok.Encode("<think>hi</think>"));
        // tokens are plain added tokens, kept when special ones are skipped; the pad token is special.
        Assert.Equal("<think> hi", tok.Decode([32000, 32001, .. TokFixtures.Llama2.Encode("hi", addSpecialTokens: false)], skipSpecialTokens: true));
    }

    [Fact]
    public void Bos_and_eos_together_rebuild_the_llama_template()
    {
        var tok = FreshLlama2();
        ConfigTokens.Apply(tok, new Dictionary<string, string> { ["bos_token"] = "<|im_start|>", ["eos_token"] = "<|im_end|>" }, null, null,
            adapter: false, loraModulesToSave: null);
        Assert.Equal(32000, tok.BosTokenId);
        Assert.Equal(32001, tok.EosTokenId);
        Assert.Equal(32000, tok.Encode("hi")[0]);
    }

    [Fact]
    public void Eos_alone_leaves_the_template_as_it_was()
    {
        var tok = FreshLlama2();
        ConfigTokens.Apply(tok, new Dictionary<string, string> { ["eos_token"] = "<|im_end|>" }, null, null, adapter: false, loraModulesToSave: null);
        Assert.Equal(1, tok.Encode("hi")[0]);
        Assert.Equal(32000, tok.EosTokenId);
    }

    [Fact]
    public void A_new_special_token_with_an_adapter_needs_trainable_embeddings()
    {
        var special = new Dictionary<string, string> { ["eos_token"] = "<|im_end|>" };
        var e = Assert.Throws<UserError>(() => ConfigTokens.Apply(FreshLlama2(), special, null, null, adapter: true, loraModulesToSave: null));
        Assert.Contains("lora_modules_to_save", e.Message);
        Assert.Contains("special_tokens.eos_token", e.Message);
        Assert.Throws<UserError>(() => ConfigTokens.Apply(FreshLlama2(), special, null, null, adapter: true, loraModulesToSave: ["lm_head"]));
        Assert.Equal(1, ConfigTokens.Apply(FreshLlama2(), special, null, null, adapter: true, loraModulesToSave: ["embed_tokens", "lm_head"]));
        // pad_token, an unchanged token, and a token that is already short are exempt, as in Axolotl.
        ConfigTokens.Apply(FreshLlama2(), new Dictionary<string, string> { ["pad_token"] = "<|im_end|>" }, null, null, adapter: true, loraModulesToSave: null);
        ConfigTokens.Apply(FreshLlama2(), new Dictionary<string, string> { ["eos_token"] = "</s>" }, null, null, adapter: true, loraModulesToSave: null);
    }

    [Fact]
    public void Unknown_special_token_names_are_user_errors()
    {
        var e = Assert.Throws<UserError>(() => FreshLlama2().SetSpecialToken("end_token", "x"));
        Assert.Contains("end_token", e.Message);
    }

    [Fact]
    public void Existing_text_becomes_a_special_token_without_growing_the_vocabulary()
    {
        var tok = FreshLlama2();
        Assert.False(tok.SetSpecialToken("pad_token", "<unk>"));
        Assert.Equal(0, tok.PadTokenId);
        Assert.Equal(32000, tok.VocabSize);
    }
}
