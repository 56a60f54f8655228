using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Adapters;

/// <summary>`axolotl train` with adapter: qlora (and DoRA on top), then `merge-lora` into the unquantized base, as Axolotl merges.</summary>
public class QloraTrainTests
{
    [Theory]
    [Trait("Category", "Slow")]
    [InlineData("adapter: qlora\nload_in_4bit: true", false)]
    [InlineData("adapter: qlora\nload_in_4bit: true\npeft_use_dora: true\nbnb_config_kwargs:\n  bnb_4bit_use_double_quant: false", true)]
    [InlineData("adapter: lora\nload_in_8bit: true\npeft_use_rslora: true", false)]
    public void Quantized_base_trains_an_adapter_that_saves_and_merges(string adapterKeys, bool dora)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var baseDir = TestSetup.Data("reference", "models", "tiny-llama");
        // One row repeated: every step sees the same batch, so the loss of a run that learns falls step after step.
        var rows = Enumerable.Range(0, 8).Select(_ =>
            new JsonObject { ["input_ids"] = new JsonArray(Enumerable.Range(0, 16).Select(j => (JsonNode)((j * 37) % 500 + 1)).ToArray()) }.ToJsonString());
        File.WriteAllLines(dir["data.jsonl"], rows);
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {baseDir}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["data.jsonl"]}
            {adapterKeys}
            lora_r: 4
            lora_alpha: 8
            lora_target_linear: true
            learning_rate: 0.01
            max_steps: 3
            logging_steps: 1
            micro_batch_size: 2
            bf16: false
            save_strategy: "no"
            output_dir: {dir["out"]}
            """);
        Assert.Equal(0, Cli.Cli.Run(["train", dir["config.yml"]]));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], Lora.ConfigFile)))!;
        Assert.Equal(dora, (bool)config["use_dora"]!);
        var keys = SafetensorsFile.Open(Path.Combine(dir["out"], Lora.WeightsFile)).Entries.Keys.ToList();
        Assert.Equal(14 * (dora ? 3 : 2), keys.Count);
        // Trained: every lora_B left its zero init, and the loss fell (the NF4 round trip alone moves merged weights,
        // so the merge check below cannot tell a trained adapter from an untrained one).
        var adapter = SafetensorsFile.Open(Path.Combine(dir["out"], Lora.WeightsFile));
        foreach (var key in keys.Where(k => k.Contains("lora_B")))
            using (var b = adapter.Read(key)) Assert.True(b.abs().max().item<float>() > 1e-4, $"{key} never moved");
        var losses = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToList();
        Assert.Equal(3, losses.Count);
        Assert.True(losses[2] < losses[0] - 0.01, $"losses {string.Join(", ", losses)} did not fall");

        Assert.Equal(0, Cli.Cli.Run(["merge-lora", dir["config.yml"]]));
        var adapted = CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32);
        if (adapterKeys.Contains("qlora"))
        {
            // Axolotl merges a QLoRA adapter into the base after an NF4 round trip of every weight matrix.
            bool doubleQuant = !adapterKeys.Contains("double_quant: false");
            using var __ = no_grad();
            foreach (var p in adapted.parameters().Where(p => p.dim() >= 2))
                using (var q = Nf4Weight.Quantize(p, doubleQuant)) p.copy_(q.Dequantize());
        }
        Lora.Load(adapted, dir["out"]);
        Lora.MergeAndUnload(adapted);
        var merged = CausalLM.FromPretrained(Path.Combine(dir["out"], "merged"), ScalarType.Float32, ScalarType.Float32);
        var untouched = CausalLM.FromPretrained(baseDir, ScalarType.Float32, ScalarType.Float32);
        using var _ = no_grad();
        var ids = tensor(new long[] { 1, 5, 9, 200, 17, 3, 88, 400 }).unsqueeze(0);
        Assert.True((merged.forward(ids) - adapted.forward(ids)).abs().max().item<float>() < 1e-4);
        Assert.True((merged.forward(ids) - untouched.forward(ids)).abs().max().item<float>() > 1e-4); // training moved it
    }
}
