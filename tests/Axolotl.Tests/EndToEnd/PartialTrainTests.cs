using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>`axolotl train` with unfrozen_parameters, LISA and LoftQ, and Axolotl's example configs for them.</summary>
[Collection(GlobalTorchRng.Name)]
public class PartialTrainTests
{
    static string TinyLlama => TestSetup.Data("reference", "models", "tiny-llama");

    static string Config(TempDir dir, string extra) => $"""
        base_model: {TinyLlama}
        datasets:
          - path: {TestSetup.WriteReferenceRows(dir, i => 20 + 8 * i)}
        sequence_len: 64
        micro_batch_size: 1
        gradient_accumulation_steps: 2
        max_steps: 4
        learning_rate: 0.001
        lr_scheduler: constant
        warmup_steps: 0
        logging_steps: 1
        bf16: false
        save_steps: 2
        output_dir: {dir["out"]}
        {extra}
        """;

    static void Train(TempDir dir, string config)
    {
        File.WriteAllText(dir["cfg.yml"], config);
        Assert.Equal(0, Cli.Cli.Run(["train", dir["cfg.yml"]]));
    }

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Theory]
    [InlineData("llama-2__lisa.yml")]
    [InlineData("llama-2__loftq.yml")]
    public void Axolotls_examples_load(string file)
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", file));
        // The resolved config saved with a run reads back the same (a resume reads it).
        foreach (var config in new[] { c, ConfigLoader.Parse(ConfigWriter.ToYaml(c), "saved.yml") })
            if (file.Contains("lisa")) Assert.Equal((4, 20, "model.layers"), (config.LisaNLayers, config.LisaStepInterval, config.LisaLayersAttribute));
            else Assert.Equal(((AdapterKind?)AdapterKind.Lora, (int?)4), (config.Adapter, config.LoftqBits));
    }

    [Fact]
    public void Bigstrals_unfrozen_parameters_read_back_from_the_saved_config()
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", "mistral__bigstral__bigstral-ds-zero3.yaml"));
        Assert.Equal(6, c.UnfrozenParameters!.Count);
        Assert.Equal(c.UnfrozenParameters, ConfigLoader.Parse(ConfigWriter.ToYaml(c), "saved.yml").UnfrozenParameters);
    }

    [Theory]
    [InlineData("adapter: lora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true\nunfrozen_parameters: [^lm_head]", "with an adapter")]
    [InlineData("lisa_n_layers: 2\nlisa_step_interval: 5\nadapter: lora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true", "does not combine with an adapter")]
    [InlineData("unfrozen_parameters: ['^model.layers.(1']", "not a valid regular expression")]
    [InlineData("adapter: lora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true\npeft: {loftq_config: {loftq_bits: 3}}", "must be 4 (NF4) or 8")]
    [InlineData("adapter: lora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true\npeft: {loftq_config: {loftq_iter: 2}}", "peft.loftq_config.loftq_iter is not a key")]
    [InlineData("peft: {loftq_config: {loftq_bits: 4}}", "set adapter: lora")]
    public void Contradictions_are_one_sentence_naming_the_key(string extra, string expected)
    {
        var yaml = $"base_model: some/model\ndatasets:\n  - path: data.jsonl\n    type: alpaca\nlearning_rate: 0.0002\n{extra}\n";
        var e = Assert.Throws<UserError>(() => ConfigLoader.Parse(yaml, "cfg.yml"));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("cfg.yml:", e.Message);
    }

    [Fact]
    public void Unfrozen_parameters_train_only_their_layer_and_save_the_whole_model()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        Train(dir, Config(dir, "unfrozen_parameters:\n  - ^model.layers.1.\ngradient_checkpointing: true"));
        var base_ = SafetensorsFile.Open(Path.Combine(TinyLlama, "model.safetensors"));
        var trained = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        Assert.Equal(base_.Entries.Keys.Order(), trained.Entries.Keys.Order());
        foreach (var key in base_.Entries.Keys)
            Assert.True(key.StartsWith("model.layers.1.") != Same(base_.Read(key), trained.Read(key)), $"{key}");
    }

    [Fact]
    public void Lisa_trains_through_the_cli_with_gradient_checkpointing()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        Train(dir, Config(dir, "lisa_n_layers: 1\nlisa_step_interval: 2\nlisa_layers_attribute: model.layers\ngradient_checkpointing: true"));
        var losses = JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray().Count(e => e!["loss"] != null);
        Assert.Equal(4, losses);
        var trained = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        Assert.Equal(SafetensorsFile.Open(Path.Combine(TinyLlama, "model.safetensors")).Entries.Keys.Order(), trained.Entries.Keys.Order());
    }

    /// <summary>
    /// One step at learning rate 0 (warmup) leaves the adapter as LoftQ made it: B·A must be the best rank-r part of
    /// W − deq(Q(W)) for the base the run used (NF4 without double quantization for lora, the model's NF4 for qlora).
    /// </summary>
    [Theory]
    [InlineData("lora")]
    [InlineData("qlora")]
    public void Loftq_starts_the_adapter_from_the_quantisation_residual(string adapter)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        Train(dir, Config(dir, $"""
            adapter: {adapter}
            {(adapter == "qlora" ? "load_in_4bit: true" : "")}
            lora_r: 4
            lora_alpha: 8
            lora_target_modules: [q_proj, down_proj]
            peft:
              loftq_config:
                loftq_bits: 4
            """).Replace("max_steps: 4", "max_steps: 1").Replace("warmup_steps: 0", "warmup_steps: 1")
            .Replace("lr_scheduler: constant", "lr_scheduler: constant_with_warmup"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir["out"], Lora.ConfigFile)))!;
        Assert.Equal("loftq", (string)config["init_lora_weights"]!);
        Assert.Equal(4, (int)config["loftq_config"]!["loftq_bits"]!);
        var base_ = SafetensorsFile.Open(Path.Combine(TinyLlama, "model.safetensors"));
        var adapterFile = SafetensorsFile.Open(Path.Combine(dir["out"], Lora.WeightsFile));
        foreach (var path in new[] { "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj" })
        {
            var w = base_.Read(path + ".weight").to(ScalarType.Float32);
            using var q = Nf4Weight.Quantize(w, doubleQuant: adapter == "qlora");
            var residual = w - q.Dequantize(ScalarType.Float32);
            var a = adapterFile.Read($"base_model.model.{path}.lora_A.weight");
            var b = adapterFile.Read($"base_model.model.{path}.lora_B.weight");
            var gram = residual.T.matmul(residual).to(ScalarType.Float64);
            var (_, vectors) = linalg.eigh(gram);
            var top = vectors.narrow(1, vectors.shape[1] - 4, 4).to(ScalarType.Float32);
            Assert.True(b.matmul(a).allclose(residual.matmul(top).matmul(top.T), rtol: 1e-3, atol: 1e-5), $"{path}: B·A is not the residual's rank-4 part");
        }
        if (adapter != "lora") return;
        // Loading the adapter (as PEFT does for init_lora_weights "loftq") puts the quantized weights into the base again.
        var model = CausalLM.FromPretrained(TinyLlama, ScalarType.Float32, ScalarType.Float32);
        Lora.Load(model, dir["out"]);
        var layer = Lora.Layers(model).First(l => l.Name == "model.layers.0.self_attn.q_proj").Layer;
        Assert.True(Same(layer.BaseWeight(ScalarType.Float32), LoftQ.RoundTrip(4)(base_.Read("model.layers.0.self_attn.q_proj.weight"))));
    }
}
