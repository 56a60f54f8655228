using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>
/// Mixtral and Qwen2-MoE against transformers 4.40 (testdata/reference/families, with the router aux loss), and
/// Qwen3-MoE and Gemma 3 (newer than that transformers) against <see cref="FirstPrinciplesReference"/>, which follows
/// transformers' current modeling_qwen3_moe.py and modeling_gemma3.py equation by equation in float64.
/// </summary>
public class MoeFamilyTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static string Dir(string family, params string[] rest) => TestSetup.Data(["reference", "families", family, .. rest]);

    static CausalLM Model(string family) => CausalLM.FromPretrained(Dir(family, "model"), ScalarType.Float32, ScalarType.Float32);

    static JsonNode Expected(string family) => JsonNode.Parse(File.ReadAllText(Dir(family, "expected.json")))!;

    static Tensor InputIds(string family) =>
        tensor(Expected(family)["input_ids"]![0]!.AsArray().Select(x => (long)x!).ToArray()).unsqueeze(0);

    static readonly long[] Ids = [1, 5, 9, 60, 17, 3, 42, 8, 33, 7];

    internal static JsonObject Qwen3Moe()
    {
        var c = NewFamilyTests.Qwen3();
        c["model_type"] = "qwen3_moe";
        c["num_hidden_layers"] = 3;
        c["num_experts"] = 4;
        c["num_experts_per_tok"] = 2;
        c["moe_intermediate_size"] = 24;
        c["norm_topk_prob"] = true;
        c["mlp_only_layers"] = new JsonArray(1); // layer 1 dense, 0 and 2 sparse
        c["router_aux_loss_coef"] = 0.05;
        return c;
    }

    internal static JsonObject Gemma3()
    {
        var c = NewFamilyTests.Llama("gemma3_text");
        c["num_hidden_layers"] = 4;
        c["head_dim"] = 16;
        c["query_pre_attn_scalar"] = 24;
        c["sliding_window"] = 3;
        c["sliding_window_pattern"] = 2; // layers 0 and 2 slide, 1 and 3 attend globally
        c["rope_theta"] = 1000.0;
        c["rope_local_base_freq"] = 50.0;
        c["final_logit_softcapping"] = 3.0;
        c["hidden_activation"] = "gelu_pytorch_tanh";
        c["tie_word_embeddings"] = true;
        return c;
    }

    /// <summary>A random model whose router weights are scaled up, so that which experts are chosen matters.</summary>
    internal static string BuildMoe(TempDir dir, JsonObject config)
    {
        var path = NewFamilyTests.Build(dir, config);
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32);
        using (no_grad())
            foreach (var (name, p) in model.named_parameters().Where(p => p.name.EndsWith(".gate.weight")))
                p.mul_(8);
        model.SavePretrained(path);
        return path;
    }

    [Theory]
    [InlineData("mixtral")]
    [InlineData("qwen2_moe")]
    public void Loss_with_router_aux_matches_transformers(string family)
    {
        using var scope = NewDisposeScope();
        var json = Expected(family);
        var ids = InputIds(family);
        var lm = Model(family);
        Assert.False(lm.OutputRouterLogits); // the checkpoints' config.json say false
        using (no_grad())
        {
            var (plain, tokens) = lm.LossSum(ids, ids);
            Assert.Null(lm.LastRouterAuxLoss);
            Assert.True(Math.Abs(plain.item<float>() / tokens - (double)json["loss"]!) < 1e-5);
            lm.OutputRouterLogits = true;
            var (sum, _) = lm.LossSum(ids, ids);
            double loss = sum.item<float>() / tokens, aux = lm.LastRouterAuxLoss!.Value;
            output.WriteLine($"{family}: loss {loss} vs {json["loss_with_router_aux"]}, aux {aux} vs {json["router_aux_loss"]}");
            Assert.True(Math.Abs(aux - (double)json["router_aux_loss"]!) < 1e-5, $"aux {aux}");
            Assert.True(Math.Abs(loss - (double)json["loss_with_router_aux"]!) < 1e-5, $"loss {loss}");
        }
        // The fused backward gives what autograd gives for the same objective, routers included.
        double scale = 1.0 / 11;
        var (sumBackward, _) = lm.LossSumBackward(ids, ids, scale);
        Assert.True(Math.Abs(sumBackward * scale - (double)json["loss_with_router_aux"]!) < 1e-5);
        var fused = lm.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        foreach (var p in lm.parameters()) p.grad = null;
        (lm.LossSum(ids, ids).Sum * scale).backward();
        foreach (var (name, p) in lm.named_parameters())
            Assert.True((p.grad! - fused[name]).abs().max().item<float>() < 1e-6, name);
        string router = family == "mixtral" ? "model.layers.0.block_sparse_moe.gate.weight" : "model.layers.0.mlp.gate.weight";
        Assert.True(fused[router].abs().max().item<float>() > 0);
    }

    [Fact]
    public void Router_aux_loss_is_token_weighted_over_micro_batches_and_skips_padding()
    {
        // Two micro-batches of one window: each adds coef × its aux × its tokens, so the window's loss is the mean
        // cross-entropy + coef × the token-weighted mean aux, whatever the split.
        using var scope = NewDisposeScope();
        var lm = Model("mixtral");
        lm.OutputRouterLogits = true;
        var ids = InputIds("mixtral");
        var first = ids.narrow(1, 0, 8);
        var second = ids.narrow(1, 6, 6);
        using var _ = no_grad();
        var (sum1, n1) = lm.LossSum(first, first);
        double aux1 = lm.LastRouterAuxLoss!.Value;
        var (sum2, n2) = lm.LossSum(second, second);
        double aux2 = lm.LastRouterAuxLoss!.Value;
        lm.OutputRouterLogits = false;
        double ce = (lm.LossSum(first, first).Sum.item<float>() + lm.LossSum(second, second).Sum.item<float>()) / (n1 + n2);
        double window = (sum1.item<float>() + sum2.item<float>()) / (n1 + n2);
        Assert.Equal(ce + 0.02 * (aux1 * n1 + aux2 * n2) / (n1 + n2), window, 1e-5);
        Assert.NotEqual(aux1, aux2, 1e-3);

        // Padding (attention mask 0, as transformers' attention_mask) is left out of the aux loss.
        lm.OutputRouterLogits = true;
        var padded = cat([first, full([1, 4], 0L)], 1);
        var mask = cat([ones([1, 8], ScalarType.Int64), zeros([1, 4], ScalarType.Int64)], 1);
        var labels = cat([first, full([1, 4], -100L)], 1);
        lm.LossSum(padded, labels, attentionMask: mask);
        Assert.Equal(aux1, lm.LastRouterAuxLoss!.Value, 1e-5);
        lm.LossSum(padded, labels);
        Assert.NotEqual(aux1, lm.LastRouterAuxLoss!.Value, 1e-4);
    }

    [Fact]
    public void Gradient_checkpointing_with_the_router_loss_is_refused_by_name()
    {
        // The checkpointed forward keeps no graph, so the router logits it reports could carry no aux-loss gradient.
        using var scope = NewDisposeScope();
        var lm = Model("mixtral");
        lm.OutputRouterLogits = true;
        lm.model.GradientCheckpointing = true;
        lm.train();
        var ids = InputIds("mixtral");
        var e = Assert.Throws<UserError>(() => lm.LossSumBackward(ids, ids, 1.0));
        Assert.Contains("gradient_checkpointing", e.Message);
        Assert.Contains("output_router_logits", e.Message);
        lm.OutputRouterLogits = false; // without the aux loss, checkpointing works as for dense models
        Assert.Equal(11, lm.LossSumBackward(ids, ids, 1.0).Tokens);
    }

    [Fact]
    public void Qwen3_moe_matches_the_first_principles_decoder_with_its_aux_loss()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var path = BuildMoe(dir, Qwen3Moe());
        var model = CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32);
        Assert.Equal([true, false, true], model.Config.Moe!.SparseLayers);
        var keys = model.named_parameters().Select(p => p.name).ToList();
        Assert.Contains("model.layers.0.mlp.experts.3.down_proj.weight", keys);
        Assert.Contains("model.layers.1.mlp.gate_proj.weight", keys); // the dense layer
        Assert.Contains("model.layers.2.self_attn.q_norm.weight", keys);
        model.OutputRouterLogits = true;
        using var _ = no_grad();
        var logits = model.forward(tensor(Ids).unsqueeze(0));
        var (expected, expectedAux) = FirstPrinciplesReference.Forward(path, Ids);
        var diff = (logits - expected.to(ScalarType.Float32)).abs().max().item<float>();
        model.LossSum(tensor(Ids).unsqueeze(0), tensor(Ids).unsqueeze(0));
        output.WriteLine($"qwen3_moe: max |logits - reference| = {diff}; aux {model.LastRouterAuxLoss} vs {expectedAux}");
        Assert.True(diff < 1e-5, $"max |logits - reference| = {diff}");
        Assert.Equal(expectedAux, model.LastRouterAuxLoss!.Value, 1e-5);
    }

    [Fact]
    public void Qwen3_moe_norm_topk_prob_and_routing_are_live()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var path = BuildMoe(dir, Qwen3Moe());
        var config = DecoderConfig.FromFolder(path);
        using var _ = no_grad();
        Tensor Logits(DecoderConfig c)
        {
            var m = CausalLM.Create(c, ScalarType.Float32, ScalarType.Float32);
            m.LoadWeights(path);
            return m.forward(tensor(Ids).unsqueeze(0));
        }
        var full = Logits(config);
        foreach (var variant in new[] { config with { Moe = config.Moe! with { NormTopKProb = false } },
                                        config with { Moe = config.Moe! with { TopK = 1 } } })
            Assert.True((Logits(variant) - full).abs().max().item<float>() > 1e-4);
    }

    [Fact]
    public void Gemma3_matches_the_first_principles_decoder()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var path = NewFamilyTests.Build(dir, Gemma3());
        var config = DecoderConfig.FromFolder(path);
        Assert.Equal([true, false, true, false], config.SlidingLayers!);
        Assert.Equal((50.0, 1000.0, true, 1.0), (config.SlidingRopeTheta!.Value, config.RopeTheta, config.QkNorm, config.NormWeightOffset));
        Assert.Null(config.AttentionSoftcap);
        var model = CausalLM.FromPretrained(path, ScalarType.Float32, ScalarType.Float32);
        using var _ = no_grad();
        var logits = model.forward(tensor(Ids).unsqueeze(0));
        var expected = FirstPrinciplesReference.Logits(path, Ids).to(ScalarType.Float32);
        var diff = (logits - expected).abs().max().item<float>();
        output.WriteLine($"gemma3_text: max |logits - reference| = {diff}");
        Assert.True(diff < 1e-5, $"max |logits - reference| = {diff}");

        // Each Gemma 3 feature is live: the local rope base, the window, the q/k norms' (1 + w), attention soft-capping.
        Tensor Logits(DecoderConfig c)
        {
            var m = CausalLM.Create(c, ScalarType.Float32, ScalarType.Float32);
            m.LoadWeights(path);
            return m.forward(tensor(Ids).unsqueeze(0));
        }
        foreach (var variant in new[] { config with { SlidingRopeTheta = null }, config with { SlidingWindow = null },
                                        config with { FinalLogitSoftcap = null }, config with { AttentionSoftcap = 0.5 } })
            Assert.True((Logits(variant) - logits).abs().max().item<float>() > 1e-4);

        // With an attention soft-cap in the config, the reference caps too.
        var capped = Gemma3();
        capped["attn_logit_softcapping"] = 0.7;
        var cappedPath = NewFamilyTests.Build(dir, capped, seed: 8);
        var cappedLogits = CausalLM.FromPretrained(cappedPath, ScalarType.Float32, ScalarType.Float32).forward(tensor(Ids).unsqueeze(0));
        Assert.True((cappedLogits - FirstPrinciplesReference.Logits(cappedPath, Ids).to(ScalarType.Float32)).abs().max().item<float>() < 1e-5);
    }

    [Fact]
    public void Gemma3_config_variants_are_read_as_transformers_does()
    {
        var json = Gemma3();
        json["layer_types"] = new JsonArray("sliding_attention", "sliding_attention", "full_attention", "full_attention");
        Assert.Equal([true, true, false, false], NewFamilyTests.FromJson(json).SlidingLayers!);
        // Newer configs: rope_parameters per layer type, the global one possibly scaled.
        var v5 = Gemma3();
        v5.Remove("rope_theta");
        v5.Remove("rope_local_base_freq");
        v5["rope_parameters"] = new JsonObject
        {
            ["full_attention"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 8.0, ["rope_theta"] = 1_000_000.0 },
            ["sliding_attention"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 10_000.0 },
        };
        var c = NewFamilyTests.FromJson(v5);
        Assert.Equal((1_000_000.0, 10_000.0, "linear", 8.0), (c.RopeTheta, c.SlidingRopeTheta!.Value, c.RopeScaling!.Type, c.RopeScaling.Factor));
        // Defaults: 5 sliding layers to 1 global, window 4096, no attention soft-cap.
        var plain = NewFamilyTests.Llama("gemma3_text");
        plain["num_hidden_layers"] = 12;
        var d = NewFamilyTests.FromJson(plain);
        Assert.Equal(Enumerable.Range(0, 12).Select(i => i % 6 != 5), d.SlidingLayers!);
        Assert.Equal((4096, 10_000.0, 256), (d.SlidingWindow!.Value, d.SlidingRopeTheta!.Value, d.HeadDim));
        Assert.Null(d.AttentionSoftcap);

        var multimodal = NewFamilyTests.Llama("gemma3");
        Assert.Contains("gemma3_text", Assert.Throws<UserError>(() => NewFamilyTests.FromJson(multimodal)).Message);
        var jitter = NewFamilyTests.Llama("mixtral");
        jitter["router_jitter_noise"] = 0.1;
        Assert.Contains("router_jitter_noise", Assert.Throws<UserError>(() => NewFamilyTests.FromJson(jitter)).Message);
        var tooMany = Qwen3Moe();
        tooMany["num_experts_per_tok"] = 5;
        Assert.Contains("num_experts_per_tok", Assert.Throws<UserError>(() => NewFamilyTests.FromJson(tooMany)).Message);
    }

    [Theory]
    [InlineData("mixtral", new[] { "gate", "k_proj", "o_proj", "q_proj", "v_proj", "w1", "w2", "w3" })]
    [InlineData("qwen2_moe", new[] { "down_proj", "gate", "gate_proj", "k_proj", "o_proj", "q_proj", "shared_expert_gate", "up_proj", "v_proj" })]
    public void Lora_targets_experts_and_router_by_peft_names_and_round_trips(string family, string[] linearNames)
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model(family);
        // lora_target_linear: every Linear but the head, routers included, as PEFT's all-linear and Axolotl's find_all_linear_names.
        Assert.Equal(linearNames, Lora.LinearModuleNames(model));
        string[] targets = family == "mixtral" ? ["w1", "w2", "w3", "gate"] : ["gate_proj", "up_proj", "down_proj", "gate"];
        var settings = new LoraSettings { Rank = 2, Alpha = 4, TargetModules = targets };
        var wrapped = Lora.Apply(model, settings);
        string block = family == "mixtral" ? "block_sparse_moe" : "mlp";
        string down = family == "mixtral" ? "w2" : "down_proj";
        Assert.Contains($"model.layers.1.{block}.experts.3.{down}", wrapped);
        Assert.Contains($"model.layers.0.{block}.gate", wrapped);
        // 2 layers × (4 experts × 3 projections + router), plus Qwen2-MoE's shared expert's 3.
        Assert.Equal(family == "mixtral" ? 26 : 32, wrapped.Count);
        using var noGrad = no_grad();
        var baseLogits = model.forward(InputIds(family));
        foreach (var (_, layer) in Lora.Layers(model)) layer.lora_B.weight.normal_(0, 0.05);
        var adapted = model.forward(InputIds(family));
        Assert.True((adapted - baseLogits).abs().max().item<float>() > 1e-4);

        Lora.Save(model, settings, dir.Path, family);
        var keys = SafetensorsFile.Open(Path.Combine(dir.Path, Lora.WeightsFile)).Entries.Keys.ToList();
        Assert.Contains($"base_model.model.model.layers.0.{block}.experts.0.{down}.lora_A.weight", keys);
        Assert.Contains($"base_model.model.model.layers.1.{block}.gate.lora_B.weight", keys);
        var reloaded = Model(family);
        Lora.Load(reloaded, dir.Path);
        Assert.Equal(0, (reloaded.forward(InputIds(family)) - adapted).abs().max().item<float>());

        // merge-lora writes the HF layout back: the same keys as the checkpoint, and the adapted logits.
        Lora.MergeAndUnload(model);
        Assert.True((model.forward(InputIds(family)) - adapted).abs().max().item<float>() < 1e-5);
        model.SavePretrained(dir["merged"]);
        var original = SafetensorsFile.Open(Dir(family, "model", "model.safetensors")).Entries.Keys.Order();
        Assert.Equal(original, SafetensorsFile.Open(Path.Combine(dir["merged"], "model.safetensors")).Entries.Keys.Order());
    }

    [Fact]
    public void Qlora_quantizes_expert_weights()
    {
        using var scope = NewDisposeScope();
        var model = Model("mixtral");
        using var noGrad = no_grad();
        var before = model.forward(InputIds("mixtral"));
        var quantized = Quantizer.QuantizeLinears(model, new QuantizationSettings(QuantKind.Nf4));
        Assert.Contains("model.layers.1.block_sparse_moe.experts.2.w3", quantized);
        Assert.DoesNotContain("lm_head", quantized);
        Assert.Empty(model.named_parameters().Where(p => p.name.Contains(".experts.")));
        var after = model.forward(InputIds("mixtral"));
        double drift = (after - before).abs().max().item<float>();
        output.WriteLine($"mixtral nf4: max |logits drift| = {drift}");
        Assert.True(drift is > 0 and < 0.5, $"drift {drift}");
        var wrapped = Lora.Apply(model, new LoraSettings { Rank = 2, Alpha = 4, TargetModules = ["w1", "w2", "w3"] });
        Assert.Equal(24, wrapped.Count);
    }

    [Fact]
    public void Each_expert_sees_only_the_tokens_routed_to_it()
    {
        // The block groups tokens per expert: an expert's MLP runs on as many rows as tokens chose it, k per token in all.
        using var scope = NewDisposeScope();
        var model = Model("mixtral");
        var rows = new List<long>();
        var block = (SparseMoeBlock)model.model.layers[0].mlp;
        foreach (var expert in block.experts)
            ((TorchSharp.torch.nn.Module<Tensor, Tensor>)expert).register_forward_pre_hook((_, x) => { rows.Add(x.shape[0]); return x; });
        using var _ = no_grad();
        model.forward(InputIds("mixtral"));
        Assert.Equal(12 * 2, rows.Sum());
        Assert.True(rows.Count <= 4);
    }
}
