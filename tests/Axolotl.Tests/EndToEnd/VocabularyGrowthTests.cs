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

    static string Config(TempDir dir, string extra, string learningRate = "0.001", string outputDir = "out")
    {
        File.WriteAllText(dir["alpaca.json"], """
            [{"instruction": "Say hi.", "input": "", "output": "hi <|brand_new|>"},
             {"instruction": "Name a colour.", "input": "", "output": "Blue <|brand_new|>"}]
            """);
        var config = dir[$"{outputDir}.yml"];
        File.WriteAllText(config, $"""
            base_model: {BaseModel}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["alpaca.json"]}
                type: alpaca
            sequence_len: 512
            micro_batch_size: 2
            max_steps: 2
            learning_rate: {learningRate}
            bf16: false
            output_dir: {dir[outputDir]}
            {extra}
            """);
        return config;
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

        // The same run with a learning rate too small to move anything keeps the rows as they were initialised.
        Assert.Equal(0, Cli.Cli.Run(["train", Config(dir, "tokens: [\"<|brand_new|>\"]", learningRate: "1e-12", outputDir: "init")]));
        var initial = CausalLM.FromPretrained(dir["init"], ScalarType.Float32, ScalarType.Float32);
        var (initialEmbedding, initialHead) = NewRows(initial, 512);
        var (trainedEmbedding, trainedHead) = NewRows(model, 512);
        // Training moved both new rows (the token is in the data, so both get gradients).
        Assert.True((trainedEmbedding - initialEmbedding).abs().max().item<float>() > 1e-4, "the new embedding row never trained");
        Assert.True((trainedHead - initialHead).abs().max().item<float>() > 1e-4, "the new lm_head row never trained");
        // transformers' rule (resize_token_embeddings, mean_resizing=False, as Axolotl calls it): new rows come from
        // _init_weights, normal(0, initializer_range = 0.02), independently for the embedding and the untied head. Over
        // these 128 draws the sample mean lies within 4.5 standard errors (0.0018) of 0 and the sample std within 5 (0.00125)
        // of 0.02: zeros, the mean of the old rows (mean resizing: std near 1e-4), nn.Embedding's normal(0, 1) or a copied
        // row all land outside.
        var draws = cat([initialEmbedding, initialHead]).to(ScalarType.Float64);
        double mean = draws.mean().item<double>(), std = draws.std().item<double>();
        Assert.True(Math.Abs(mean) < 0.008, $"new rows' mean {mean}, expected about 0");
        Assert.True(Math.Abs(std - 0.02) < 0.00625, $"new rows' std {std}, expected about 0.02 (initializer_range)");
        Assert.False(initialEmbedding.allclose(initialHead), "the embedding and head rows are one draw");
    }

    static (Tensor Embedding, Tensor Head) NewRows(CausalLM model, int row) =>
        (model.model.embed_tokens.weight[row].detach().clone(), model.lm_head!.weight[row].detach().clone());

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
        var merged = CausalLM.FromPretrained(dir["out/merged"], ScalarType.Float32, ScalarType.Float32);
        Assert.Equal(513, merged.Config.VocabSize);
        // modules_to_save trained the new rows: the same run with a learning rate too small to move anything merges the
        // rows as they were initialised, and the trained ones differ from them.
        var still = Config(dir, "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_modules: [q_proj, v_proj]\n" +
                                "lora_modules_to_save: [embed_tokens, lm_head]\nspecial_tokens:\n  eos_token: \"<|my_end|>\"", learningRate: "1e-12", outputDir: "init");
        Assert.Equal(0, Cli.Cli.Run(["train", still]));
        Assert.Equal(0, Cli.Cli.Run(["merge-lora", still]));
        // The new token is the EOS ending each row: it is predicted (its head row gets gradients) but never read before a
        // predicted token, so its embedding row gets none; an old row of the trained embeddings shows they trained.
        var initial = CausalLM.FromPretrained(dir["init/merged"], ScalarType.Float32, ScalarType.Float32);
        var (_, initialHead) = NewRows(initial, 512);
        var (_, trainedHead) = NewRows(merged, 512);
        int said = Tokenizer.FromFolder(dir["out/merged"]).Encode("Blue", addSpecialTokens: false)[0];
        Assert.True((NewRows(merged, said).Embedding - NewRows(initial, said).Embedding).abs().max().item<float>() > 1e-4, "the embeddings never trained");
        Assert.True((trainedHead - initialHead).abs().max().item<float>() > 1e-4, "the new lm_head row never trained");
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
