using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>ReLoRA (relora: true) as Axolotl's ReLoRACallback: merge, restart, prune, and the run around it.</summary>
[Collection(GlobalTorchRng.Name)]
public class ReloraTests
{
    static readonly string BaseDir = TestSetup.Data("reference", "models", "tiny-llama");
    static readonly long[,] Ids = { { 1, 37, 74, 111, 148, 185, 222, 259 } };

    static CausalLM LoraModel(bool quantized)
    {
        var model = CausalLM.FromPretrained(BaseDir, ScalarType.Float32, ScalarType.Float32);
        if (quantized) Quantizer.QuantizeLinears(model, new QuantizationSettings(QuantKind.Nf4));
        Lora.Apply(model, new LoraSettings { Rank = 4, Alpha = 8, TargetModules = Lora.LinearModuleNames(model) });
        // A trained-looking adapter: B away from zero.
        using var _ = no_grad();
        manual_seed(3);
        foreach (var (_, layer) in Lora.Layers(model)) layer.lora_B.weight.copy_(randn_like(layer.lora_B.weight) * 0.05);
        return model;
    }

    [Fact]
    public void Merge_and_restart_keeps_the_models_function_and_restarts_the_adapter()
    {
        using var scope = NewDisposeScope();
        var model = LoraModel(quantized: false);
        model.eval();
        using var _ = no_grad();
        var before = model.forward(tensor(Ids));
        var oldA = Lora.Layers(model).Select(l => l.Layer.lora_A.weight.clone()).ToList();
        var oldBase = Lora.Layers(model).Select(l => l.Layer.BaseWeight(ScalarType.Float32)).ToList();
        var deltas = Lora.Layers(model).Select(l => l.Layer.Delta()).ToList();
        Assert.Equal(14, Relora.MergeAndReset(model));
        var after = model.forward(tensor(Ids));
        Assert.True((after - before).abs().max().item<float>() < 1e-4, "logits changed by the merge");
        var layers = Lora.Layers(model).ToList();
        for (int i = 0; i < layers.Count; i++)
        {
            var layer = layers[i].Layer;
            Assert.Equal(0f, layer.lora_B.weight.abs().max().item<float>());
            Assert.False(layer.lora_A.weight.allclose(oldA[i]), "lora_A was not re-initialised");
            // kaiming_uniform(a = √5) on [r, in]: U(−1/√in, 1/√in).
            Assert.True(layer.lora_A.weight.abs().max().item<float>() <= 1 / Math.Sqrt(layer.InFeatures) + 1e-6);
            Assert.True(layer.BaseWeight(ScalarType.Float32).allclose(oldBase[i] + deltas[i], 1e-6, 1e-6), "the base is not W + scale·B·A");
        }
    }

    [Fact]
    public void A_quantized_base_is_merged_through_its_dequantized_weight_and_quantized_again()
    {
        using var scope = NewDisposeScope();
        var model = LoraModel(quantized: true);
        var (_, first) = Lora.Layers(model).First();
        var expected = Nf4Weight.Quantize(first.BaseWeight(ScalarType.Float32) + first.Delta(), doubleQuant: true).Dequantize(ScalarType.Float32);
        Relora.MergeAndReset(model);
        Assert.IsType<QuantizedLinear>(first.base_layer);
        Assert.True(first.BaseWeight(ScalarType.Float32).equal(expected).all().item<bool>());
    }

    [Fact]
    public void Magnitude_pruning_zeroes_the_smallest_ratio_of_values()
    {
        using var scope = NewDisposeScope();
        var values = Enumerable.Range(1, 1000).Select(i => (float)(i % 2 == 0 ? i : -i) / 1000).ToArray();
        var t = tensor(values.OrderBy(v => Math.Sin(v * 1000)).ToArray()); // shuffled
        Relora.MagnitudePrune(t, 0.9);
        var kept = t.data<float>().Where(v => v != 0).Select(Math.Abs).ToList();
        // torch.quantile(|t|, 0.9) interpolates between the 900th and 901st magnitudes (0.9001): 100 values stay.
        Assert.Equal(100, kept.Count);
        Assert.True(kept.Min() > 0.9f);
    }

    [Fact]
    public void Random_pruning_keeps_about_one_minus_the_ratio()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var t = ones(10_000);
        Relora.RandomPrune(t, 0.9);
        double kept = t.count_nonzero().item<long>() / 10_000.0;
        Assert.InRange(kept, 0.08, 0.12);
    }

    [Theory]
    [InlineData("adamw_torch")]
    [InlineData("adamw_bnb_8bit")]
    public void Pruning_reaches_the_optimizer_moments_fp32_or_8bit(string optimizer)
    {
        using var scope = NewDisposeScope();
        var p = new Parameter(randn(64, 128));
        var o = TrainingOptimizer.Create(optimizer, [("x.lora_A.weight", p)], new TrainingOptions());
        p.grad = randn(64, 128);
        o.Step(1e-3);
        o.TransformMoments(0, t => Relora.MagnitudePrune(t, 0.9));
        var state = o.StateTensors(0);
        // fp32: m and v; 8-bit: codes whose value is 0 (the maps hold 0 exactly).
        var moments = optimizer == "adamw_torch"
            ? new[] { state[0], state[1] }
            : new[] { index_select(tensor(Blockwise8Bit.DynamicMap), 0, state[0].to(ScalarType.Int64)), index_select(tensor(Blockwise8Bit.UnsignedDynamicMap), 0, state[2].to(ScalarType.Int64)) };
        foreach (var m in moments)
        {
            double zeros = 1 - m.count_nonzero().item<long>() / (double)m.numel();
            Assert.InRange(zeros, 0.89, 0.95);
        }
        o.Dispose();
    }

    static string Config(TempDir dir, string output, string extra = "", bool relora = true)
    {
        var rows = Enumerable.Range(0, 8).Select(i =>
            new JsonObject { ["input_ids"] = new JsonArray(Enumerable.Range(0, 16).Select(j => (JsonNode)((j * 37 + i) % 500 + 1)).ToArray()) }.ToJsonString());
        File.WriteAllLines(dir["data.jsonl"], rows);
        var path = dir[$"{output}.yml"];
        File.WriteAllText(path, $"""
            base_model: {BaseDir}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["data.jsonl"]}
            adapter: lora
            lora_r: 4
            lora_alpha: 8
            lora_target_linear: true
            relora: {(relora ? "true" : "false")}
            relora_prune_ratio: 0.9
            jagged_restart_steps: 2
            jagged_restart_warmup_steps: 1
            jagged_restart_anneal_steps: false
            optimizer: adamw_torch
            learning_rate: 0.01
            warmup_steps: 0
            max_steps: 4
            logging_steps: 1
            micro_batch_size: 2
            save_steps: 2
            bf16: false
            output_dir: {dir[output]}
            {extra}
            """);
        return path;
    }

    [Fact]
    [Trait("Category", "Slow")]
    public void Train_restarts_saves_the_merged_model_and_resumes_exactly()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        Assert.Equal(0, Cli.Cli.Run(["train", Config(dir, "straight")]));
        var history = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["straight"], "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).ToList();
        // One restart, after step 2 (none after the last step); Axolotl's count as each step logs.
        Assert.Equal([0, 0, 1, 1], history.Select(e => (int)e!["num_lora_restarts"]!));
        // The jagged schedule: constant 0.01 (cosine over 4 steps) times the restart scale read one step ahead.
        // Update 2, just before the restart, runs at the floor: 0.01 × cosine 0.5 × 0.001 (logged after step 1).
        Assert.Equal(0.01 * 0.5 * 0.001, (double)history[0]!["learning_rate"]!, 12);
        // The result is the full model with the LoRA merged in, as Axolotl saves a ReLoRA run.
        Assert.True(File.Exists(Path.Combine(dir["straight"], "model.safetensors")));
        Assert.False(File.Exists(Path.Combine(dir["straight"], Lora.WeightsFile)));
        Assert.True(File.Exists(Path.Combine(dir["straight"], "checkpoint-2", Relora.FolderName, "model.safetensors")));

        // Resuming from checkpoint-2 (after the restart) restores the merged base: the same final weights.
        Config(dir, "resumed");
        Directory.CreateDirectory(dir["resumed"]);
        CopyDirectory(Path.Combine(dir["straight"], "checkpoint-2"), Path.Combine(dir["resumed"], "checkpoint-2"));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["resumed.yml"], "--resume-from-checkpoint", Path.Combine(dir["resumed"], "checkpoint-2")]));
        var straight = SafetensorsFile.Open(Path.Combine(dir["straight"], "model.safetensors"));
        var resumed = SafetensorsFile.Open(Path.Combine(dir["resumed"], "model.safetensors"));
        foreach (var key in straight.Entries.Keys)
        {
            using var a = straight.Read(key);
            using var b = resumed.Read(key);
            Assert.True(a.equal(b).all().item<bool>(), $"{key} differs after resume");
        }
    }

    static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        foreach (var sub in Directory.GetDirectories(from)) CopyDirectory(sub, Path.Combine(to, Path.GetFileName(sub)));
    }

    [Fact]
    public void Axolotls_relora_example_loads_and_its_checks_apply()
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", "llama-2__relora.yml"));
        Assert.True(c.Relora);
        Assert.Equal((150, 10, 0), (c.JaggedRestartSteps, c.JaggedRestartWarmupSteps, c.JaggedRestartAnnealSteps));
        Assert.Equal(new LrSchedule.JaggedRestarts(150, 10, 1, 0.001), Relora.JaggedRestartsOf(c));
        const string Minimal = "base_model: m\ndatasets:\n  - path: d.jsonl\nlearning_rate: 0.001\nadapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\n";
        Assert.Contains("jagged_restart_steps must be set to use ReLoRA", Assert.Throws<UserError>(() => ConfigLoader.Parse(Minimal + "relora: true\n", "c.yml")).Message);
        Assert.Contains("optimizer sgd is not supported with ReLoRA", Assert.Throws<UserError>(() => ConfigLoader.Parse(Minimal + "relora: true\njagged_restart_steps: 5\noptimizer: sgd\n", "c.yml")).Message);
    }

    [Fact]
    public void Save_only_model_checkpoints_hold_weights_only_and_refuse_a_resume()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var config = Config(dir, "out", "save_only_model: true", relora: false);
        Assert.Equal(0, Cli.Cli.Run(["train", config]));
        var checkpoint = Path.Combine(dir["out"], "checkpoint-2");
        Assert.True(File.Exists(Path.Combine(checkpoint, Lora.WeightsFile)));
        Assert.False(File.Exists(Path.Combine(checkpoint, "model.safetensors")), "a LoRA checkpoint holds the adapter only");
        Assert.False(Directory.Exists(Path.Combine(checkpoint, Relora.FolderName)), "no merged base without relora");
        Assert.True(File.Exists(Path.Combine(checkpoint, "trainer_state.json")));
        Assert.False(File.Exists(Path.Combine(checkpoint, CheckpointStore.OptimizerFile)));
        Assert.False(File.Exists(Path.Combine(checkpoint, CheckpointStore.RngFile)));
        var e = Assert.Throws<UserError>(() => CheckpointStore.Restore(checkpoint, TrainingOptimizer.Create("adamw_torch", [("w", new Parameter(zeros(2)))], new TrainingOptions()), new TrainerState()));
        Assert.Contains("was saved with save_only_model", e.Message);
    }
}
