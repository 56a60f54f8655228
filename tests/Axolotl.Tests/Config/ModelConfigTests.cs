using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Recipes;
using static TorchSharp.torch;

namespace Axolotl.Tests.Config;

/// <summary>
/// model_config (Axolotl's overrides_of_model_config): values set on base_model's config before the model is built.
/// The MoE checks use the tiny Mixtral whose loss, with and without the router load-balancing loss, transformers
/// computed (testdata/reference/families/mixtral/expected.json); its config.json says output_router_logits: false.
/// </summary>
public class ModelConfigTests
{
    static readonly string Mixtral = TestSetup.Data("reference", "families", "mixtral", "model");

    static string Yaml(string extra) => $"""
        base_model: {Mixtral}
        datasets:
          - path: data.jsonl
            type: alpaca
        learning_rate: 0.0002
        {extra}
        """;

    static AxolotlConfig Parse(string yaml, params string[] overrides) => ConfigLoader.Parse(yaml, "cfg.yml", overrides);

    [Fact]
    public void Values_keep_their_yaml_types()
    {
        var c = Parse(Yaml("""
            model_config:
              output_router_logits: true
              rope_theta: 5e5
              num_local_experts: 4
              rope_scaling: {type: linear, factor: 2.0}
              layer_types: [full_attention, sliding_attention]
              name: "true"
              unset: null
            """));
        var m = c.ModelConfig!;
        Assert.True(m["output_router_logits"]!.GetValue<bool>());
        Assert.Equal(500000.0, m["rope_theta"]!.GetValue<double>());
        Assert.Equal(4L, m["num_local_experts"]!.GetValue<long>());
        Assert.Equal("linear", m["rope_scaling"]!["type"]!.GetValue<string>());
        Assert.Equal(2.0, m["rope_scaling"]!["factor"]!.GetValue<double>());
        Assert.Equal("sliding_attention", m["layer_types"]![1]!.GetValue<string>());
        Assert.Equal("true", m["name"]!.GetValue<string>()); // quoted: a string, as YAML reads it
        Assert.True(m.ContainsKey("unset") && m["unset"] is null);
        Assert.Empty(c.Warnings);
    }

    [Theory]
    [InlineData("model_config: true")]
    [InlineData("model_config: [output_router_logits]")]
    [InlineData("model_config: output_router_logits")]
    public void A_value_that_is_not_a_mapping_is_refused_naming_key_and_line(string line)
    {
        var e = Assert.Throws<UserError>(() => Parse(Yaml(line)));
        Assert.StartsWith("cfg.yml:6:", e.Message);
        Assert.Contains("'model_config' must be a mapping", e.Message);
        Assert.Single(e.Message.Split('\n'));
    }

    [Fact]
    public void The_older_name_is_read_with_a_warning()
    {
        var c = Parse(Yaml("overrides_of_model_config: {rope_theta: 1000}"));
        Assert.Equal(1000L, c.ModelConfig!["rope_theta"]!.GetValue<long>());
        var warning = Assert.Single(c.Warnings);
        Assert.Contains("'overrides_of_model_config'", warning);
        Assert.Contains("'model_config'", warning);
    }

    [Fact]
    public void The_resolved_config_writes_it_back()
    {
        var c = Parse(Yaml("model_config: {output_router_logits: true, rope_scaling: {type: linear, factor: 2}}"));
        var again = ConfigLoader.Parse(ConfigWriter.ToYaml(c), "resolved.yml");
        Assert.True(JsonNode.DeepEquals(c.ModelConfig, again.ModelConfig));
        Assert.Equal("object", ConfigWriter.Schema()["properties"]!["model_config"]!["type"]!.GetValue<string>());
    }

    [Fact]
    public void An_override_changes_what_is_built()
    {
        var plain = ModelLoading.Architecture(Parse(Yaml("")));
        var changed = ModelLoading.Architecture(Parse(Yaml("model_config: {rope_theta: 500.0, router_aux_loss_coef: 0.5}")));
        Assert.Equal(1_000_000, plain.RopeTheta);
        Assert.Equal(500, changed.RopeTheta);
        Assert.Equal(0.5, changed.Moe!.RouterAuxLossCoef);
        Assert.Equal(500.0, changed.Raw["rope_theta"]!.GetValue<double>()); // what a saved model's config.json says
    }

    [Fact]
    public void A_bad_override_is_named_as_such()
    {
        var e = Assert.Throws<UserError>(() => ModelLoading.Architecture(Parse(Yaml("model_config: {model_type: falcon}"))));
        Assert.Contains("model_config", e.Message);
        Assert.Contains("'falcon'", e.Message);
    }

    [Fact]
    public void Output_router_logits_turns_on_the_router_loss_transformers_computes()
    {
        using var scope = NewDisposeScope();
        var expected = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "families", "mixtral", "expected.json")))!;
        var ids = tensor(expected["input_ids"]![0]!.AsArray().Select(x => (long)x!).ToArray()).unsqueeze(0);
        double Loss(string extra, bool routerLogits)
        {
            var lm = CausalLM.Create(ModelLoading.Architecture(Parse(Yaml(extra))), ScalarType.Float32, ScalarType.Float32);
            lm.LoadWeights(Mixtral);
            Assert.Equal(routerLogits, lm.OutputRouterLogits);
            using var _ = no_grad();
            var (sum, tokens) = lm.LossSum(ids, ids);
            return sum.item<float>() / tokens;
        }
        Assert.True(Math.Abs(Loss("", false) - (double)expected["loss"]!) < 1e-5);
        Assert.True(Math.Abs(Loss("model_config: {output_router_logits: true}", true) - (double)expected["loss_with_router_aux"]!) < 1e-5);
    }

    [Fact]
    public void A_saved_model_has_the_overridden_config()
    {
        using var scope = NewDisposeScope();
        using var dir = new TempDir();
        var lm = CausalLM.Create(ModelLoading.Architecture(Parse(Yaml("model_config: {output_router_logits: true}"))), ScalarType.Float32, ScalarType.Float32);
        lm.LoadWeights(Mixtral);
        lm.SavePretrained(dir.Path);
        var saved = DecoderConfig.FromFolder(dir.Path);
        Assert.True(saved.Moe!.OutputRouterLogits);
        Assert.True(saved.Raw["output_router_logits"]!.GetValue<bool>());
    }

    [Fact]
    public void Axolotls_bigstral_example_sets_it()
    {
        var path = TestSetup.Data("axolotl-configs", "mistral__bigstral__bigstral-ds-zero3.yaml");
        var c = ConfigLoader.Load(path);
        Assert.True(c.ModelConfig!["output_router_logits"]!.GetValue<bool>());
    }
}
