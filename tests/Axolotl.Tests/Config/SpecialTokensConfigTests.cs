using Axolotl.Config;
using Axolotl.Recipes;

namespace Axolotl.Tests.Config;

public class SpecialTokensConfigTests
{
    static AxolotlConfig Load(string extra, string adapter = "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n") => ConfigLoader.Parse(
        $"base_model: m\ntokenizer_config: {TestSetup.Data("tok-llama2")}\nlearning_rate: 0.0002\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n{adapter}{extra}", "cfg.yml");

    [Fact]
    public void Special_tokens_from_the_vocabulary_are_set_on_the_tokenizer_as_Axolotl_does()
    {
        var config = Load("special_tokens:\n  pad_token: \"</s>\"\n");
        Assert.Equal("</s>", config.SpecialTokens!["pad_token"]);
        var plain = ModelLoading.LoadTokenizer(Load(""));
        var tokenizer = ModelLoading.LoadTokenizer(config);
        Assert.Equal(2, tokenizer.PadTokenId);
        Assert.NotEqual(tokenizer.PadTokenId, plain.PadTokenId);
        Assert.Equal(plain.VocabSize, tokenizer.VocabSize);
    }

    [Fact]
    public void A_new_token_grows_the_vocabulary_and_with_an_adapter_Axolotl_demands_trainable_embeddings()
    {
        var full = Load("special_tokens:\n  pad_token: \"<|my_pad|>\"\n", adapter: "");
        var plain = ModelLoading.LoadTokenizer(Load(""));
        var grown = ModelLoading.LoadTokenizer(full);
        Assert.Equal(plain.VocabSize + 1, grown.VocabSize);
        Assert.Equal(plain.VocabSize, grown.PadTokenId);
        // With an adapter and a new non-pad special token, Axolotl's own demand.
        var lora = Load("special_tokens:\n  eos_token: \"<|my_end_of_turn|>\"\n");
        Assert.Contains("lora_modules_to_save", Assert.Throws<UserError>(() => ModelLoading.LoadTokenizer(lora)).Message);
    }

    [Fact]
    public void Special_tokens_with_an_unknown_name_say_which_names_exist()
    {
        var e = Assert.Throws<UserError>(() => ModelLoading.LoadTokenizer(Load("special_tokens:\n  padding_token: \"</s>\"\n")));
        Assert.Contains("padding_token", e.Message);
        Assert.Contains("pad_token", e.Message);
    }
}
