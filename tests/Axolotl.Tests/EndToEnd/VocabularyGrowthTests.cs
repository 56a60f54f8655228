using System.Text.Json.Nodes;
using Axolotl.Models;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>special_tokens/tokens new to the vocabulary: embeddings grown as resize_token_embeddings, tokenizer saved with them.</summary>
[Collection(GlobalTorchRng.Name)]
public class VocabularyGrowthTests
{
    static readonly string BaseModel = TestSetup.Data("reference", "models", "tiny-llama"); // vocab 512, untied head

    static string Config(TempDir dir, string extra)
    {
        File.WriteAllText(dir["alpaca.json"], """
            [{"instruction": "Say hi.", "input": "", "output": "hi <|brand_new|>"},
             {"instruction": "Name a colour.", "input": "", "output": "Blue <|brand_new|>"}]
            """);
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {BaseModel}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["alpaca.json"]}
                type: alpaca
            sequence_len: 512
            micro_batch_size: 2
            max_steps: 2
            learning_rate: 0.001
            bf16: false
            output_dir: {dir["out"]}
            {extra}
            """);
        return dir["c.yml"];
    }

    [Fact]
    public void A_full_fine_tune_with_new_tokens_saves_a_grown_model_and_a_tokenizer_that_knows_them()
    {
        using var dir = TestSetup.TempDir();
        Assert.Equal(0, Cli.Cli.Run(["train", Config(dir, "tokens: [\"<|brand_new|>\"]")]));
        Assert.Equal(513, (int)JsonNode.Parse(File.ReadAllText(dir["out/config.json"]))!["vocab_size"]!);
        var tokenizer = Tokenizer.FromFolder(dir["out"]);
        Assert.Equal([512], tokenizer.Encode("<|brand_new|>", addSpecialTokens: false));
        Assert.Equal(513, tokenizer.VocabSize);
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(dir["out"], ScalarType.Float32, ScalarType.Float32);
        Assert.Equal(513, model.forward(tensor(new long[,] { { 1, 512 } })).shape[2]);
        // The old rows are the base's (trained a little), the new one is fresh: not a copy of any base row.
        var baseModel = CausalLM.FromPretrained(BaseModel, ScalarType.Float32, ScalarType.Float32);
        var newRow = model.model.embed_tokens.weight[512];
        Assert.True(newRow.abs().max().item<float>() > 0);
        Assert.True((baseModel.model.embed_tokens.weight - newRow).abs().sum(1).min().item<float>() > 1e-3);
    }

    [Fact]
    public void A_lora_run_with_a_new_special_token_trains_the_embeddings_and_merges_into_a_grown_model()
    {
        using var dir = TestSetup.TempDir();
        var config = Config(dir, "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: [q_proj, v_proj]\n" +
                                 "lora_modules_to_save: [embed_tokens, lm_head]\nspecial_tokens:\n  eos_token: \"<|my_end|>\"");
        Assert.Equal(0, Cli.Cli.Run(["train", config]));
        Assert.Equal(0, Cli.Cli.Run(["merge-lora", config]));
        Assert.Equal(513, (int)JsonNode.Parse(File.ReadAllText(dir["out/merged/config.json"]))!["vocab_size"]!);
        var tokenizer = Tokenizer.FromFolder(dir["out/merged"]);
        Assert.Equal(("<|my_end|>", 512), (tokenizer.EosToken, tokenizer.EosTokenId!.Value));
        using var scope = NewDisposeScope();
        Assert.Equal(513, CausalLM.FromPretrained(dir["out/merged"], ScalarType.Float32, ScalarType.Float32).Config.VocabSize);
    }

    [Fact]
    public void A_run_from_the_dataset_cache_still_has_its_tokenizer_and_trains_the_same()
    {
        using var dir = TestSetup.TempDir();
        var config = Config(dir, $"tokens: [\"<|brand_new|>\"]\ndataset_prepared_path: {dir["prepared"]}");
        Assert.Equal(0, Cli.Cli.Run(["train", config]));
        var first = File.ReadAllText(dir["out/trainer_state.json"]);
        Directory.Delete(dir["out"], recursive: true);
        Assert.Equal(0, Cli.Cli.Run(["train", config])); // the data comes from the cache this time
        Assert.True(File.Exists(dir["out/tokenizer.json"]));
        Assert.Equal(513, (int)JsonNode.Parse(File.ReadAllText(dir["out/config.json"]))!["vocab_size"]!);
        static IEnumerable<double> Losses(string state) => JsonNode.Parse(state)!["log_history"]!.AsArray().Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!);
        Assert.Equal(Losses(first), Losses(File.ReadAllText(dir["out/trainer_state.json"])));
    }
}
