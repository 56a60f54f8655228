using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.IO;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>
/// Mixture-of-experts models through the same CLI commands as the dense families: train (LoRA on experts and routers,
/// QLoRA with quantized experts, the router aux loss), merge-lora and inference. Nothing downstream asks the family.
/// </summary>
[Collection(ConsoleCapture.Name)]
public class MoeTrainTests
{
    /// <summary>The reference Mixtral with output_router_logits: true, as Axolotl's Mixtral examples set it for training.</summary>
    static string MixtralWithRouterLoss(TempDir dir)
    {
        var path = dir["mixtral"];
        Directory.CreateDirectory(path);
        var source = TestSetup.Data("reference", "families", "mixtral", "model");
        foreach (var file in Directory.GetFiles(source)) File.Copy(file, Path.Combine(path, Path.GetFileName(file)));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(path, "config.json")))!.AsObject();
        config["output_router_logits"] = true;
        File.WriteAllText(Path.Combine(path, "config.json"), config.ToJsonString());
        return path;
    }

    static string Config(TempDir dir, string baseModel, string methodLines)
    {
        var ids = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "step3_batch.json")))!["input_ids"]![0]!
            .AsArray().Take(24).Select(x => (JsonNode)(int)x!).ToArray();
        var row = new JsonObject { ["input_ids"] = new JsonArray(ids), ["labels"] = new JsonArray(ids.Select(n => n.DeepClone()).ToArray()) };
        File.WriteAllLines(dir["rows.jsonl"], [row.ToJsonString(), row.ToJsonString()]);
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {baseModel}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["rows.jsonl"]}
                ds_type: json
            sequence_len: 32
            {methodLines}
            micro_batch_size: 1
            gradient_accumulation_steps: 2
            max_steps: 3
            learning_rate: 0.01
            lr_scheduler: constant
            max_grad_norm: 0
            logging_steps: 1
            bf16: false
            output_dir: {dir["out"]}
            """);
        return dir["config.yml"];
    }

    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    [Theory]
    [InlineData("lora")]
    [InlineData("qlora")]
    public void Adapters_on_experts_and_routers_train_and_merge(string adapter)
    {
        using var dir = TestSetup.TempDir();
        var baseModel = MixtralWithRouterLoss(dir);
        string method = adapter == "qlora"
            ? "adapter: qlora\nload_in_4bit: true\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true"
            : "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true";
        var config = Config(dir, baseModel, method);
        Assert.Equal(0, Cli.Cli.Run(["train", config]));
        var losses = Losses(dir["out"]);
        Assert.Equal(3, losses.Length);
        Assert.True(losses[2] < losses[0], $"losses {string.Join(", ", losses)}");
        var keys = SafetensorsFile.Open(Path.Combine(dir["out"], "adapter_model.safetensors")).Entries.Keys.ToList();
        Assert.Contains("base_model.model.model.layers.1.block_sparse_moe.experts.3.w2.lora_B.weight", keys);
        Assert.Contains("base_model.model.model.layers.0.block_sparse_moe.gate.lora_A.weight", keys);

        // The first logged loss is the full window's loss with the router term: the untrained base model's
        // cross-entropy + 0.02 × its load-balancing loss on the same rows (B = 0, so the adapter changes nothing yet).
        using var scope = NewDisposeScope();
        if (adapter == "lora")
        {
            var model = CausalLM.FromPretrained(baseModel, ScalarType.Float32, ScalarType.Float32);
            var row = JsonNode.Parse(File.ReadAllLines(dir["rows.jsonl"])[0])!["input_ids"]!.AsArray().Select(x => (long)x!).ToArray();
            var ids = tensor(row).unsqueeze(0);
            using var noGrad = no_grad();
            var (sum, tokens) = model.LossSum(ids, ids);
            Assert.True(model.LastRouterAuxLoss > 0);
            Assert.Equal(sum.item<float>() / tokens, losses[0], 1e-4);
        }

        Assert.Equal(0, Cli.Cli.Run(["merge-lora", config, "--lora-model-dir", dir["out"]]));
        var merged = SafetensorsFile.Open(Path.Combine(dir["out"], "merged", "model.safetensors")).Entries.Keys.Order();
        Assert.Equal(SafetensorsFile.Open(Path.Combine(baseModel, "model.safetensors")).Entries.Keys.Order(), merged);
    }

    [Fact]
    public void Full_finetune_trains_the_routers_with_the_aux_loss()
    {
        using var dir = TestSetup.TempDir();
        var baseModel = MixtralWithRouterLoss(dir);
        Assert.Equal(0, Cli.Cli.Run(["train", Config(dir, baseModel, "")]));
        using var scope = NewDisposeScope();
        var before = SafetensorsFile.Open(Path.Combine(baseModel, "model.safetensors"));
        var after = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        foreach (var key in new[] { "model.layers.0.block_sparse_moe.gate.weight", "model.layers.1.block_sparse_moe.experts.0.w1.weight" })
            Assert.True((after.Read(key) - before.Read(key)).abs().max().item<float>() > 0, key);
    }

    [Fact]
    public void Inference_streams_a_greedy_decode()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["alpaca.json"], """[{"instruction": "Say hi.", "input": "", "output": "hi"}]""");
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {TestSetup.Data("reference", "families", "qwen2_moe", "model")}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            bf16: false
            datasets:
              - path: {dir["alpaca.json"]}
                type: alpaca
            learning_rate: 0.001
            output_dir: {dir["out"]}
            """);
        var (oldOut, oldIn) = (Console.Out, Console.In);
        var captured = new StringWriter();
        int code;
        try
        {
            Console.SetOut(captured);
            Console.SetIn(new StringReader(""));
            code = Cli.Cli.Run(["inference", dir["config.yml"], "--prompt", "Name a colour.", "--temperature", "0", "--max-new-tokens", "8"]);
        }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetIn(oldIn);
        }
        Assert.Equal(0, code);
        Assert.False(string.IsNullOrWhiteSpace(captured.ToString()));
    }
}
