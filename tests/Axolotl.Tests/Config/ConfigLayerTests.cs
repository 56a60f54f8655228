using Axolotl.Config;

namespace Axolotl.Tests.Config;

/// <summary>A config built in code goes through the same checks and derivations as one read from YAML.</summary>
public class ConfigLayerTests
{
    static AxolotlConfig InCode() => new()
    {
        BaseModel = "models/some-model",
        Datasets = [new DatasetConfig { Path = "data/train.jsonl", Type = "alpaca" }],
        LearningRate = 2e-4,
        MicroBatchSize = 2,
        GradientAccumulationSteps = 4,
    };

    [Fact]
    public void Resolve_derives_what_the_yaml_loader_derives()
    {
        var resolved = InCode().Resolve();
        Assert.Equal(8, resolved.BatchSize);
        Assert.Equal(2, resolved.EvalBatchSize);
        Assert.Equal("models/some-model", resolved.TokenizerConfig);
        Assert.Equal(1.0, resolved.MaxGradNorm);
        Assert.Equal("sdpa", resolved.AttnImplementation);
    }

    [Fact]
    public void Resolve_refuses_what_the_yaml_loader_refuses()
    {
        var config = InCode();
        config.LearningRate = null;
        Assert.Contains("'learning_rate' is required", Assert.Throws<UserError>(() => config.Resolve()).Message);
        config = InCode();
        config.Adapter = AdapterKind.Qlora;
        Assert.Contains("adapter: qlora requires load_in_4bit", Assert.Throws<UserError>(() => config.Resolve()).Message);
        config = InCode();
        config.Datasets[0].Type = "no_such_type";
        Assert.Contains("datasets[0].type", Assert.Throws<UnsupportedKeysError>(() => config.Resolve()).Message);
    }

    [Fact]
    public void The_saved_config_names_hub_ids_not_cache_paths()
    {
        var config = InCode();
        config.AsWritten["base_model"] = "org/model";
        config.AsWritten["datasets[0].path"] = "org/data";
        var yaml = ConfigWriter.ToYaml(config);
        Assert.Contains("base_model: \"org/model\"", yaml);
        Assert.Contains("- path: \"org/data\"", yaml);
        Assert.DoesNotContain("models/some-model\"", yaml.Split('\n').Single(l => l.StartsWith("base_model:")));
    }

    [Fact]
    public void Fixed_sets_are_typed_and_a_value_outside_them_is_named()
    {
        var yaml = "base_model: m\ndatasets:\n  - path: d.jsonl\n    type: alpaca\nlearning_rate: 1e-4\nsave_strategy: epoch\neval_strategy: no\n";
        var config = ConfigLoader.Parse(yaml, "c.yml");
        Assert.Equal((IntervalStrategy.Epoch, (IntervalStrategy?)IntervalStrategy.No), (config.SaveStrategy, config.EvalStrategy));
        // Written back as Axolotl spells it, and read back the same.
        Assert.Contains("save_strategy: epoch", ConfigWriter.ToYaml(config));
        Assert.Equal(IntervalStrategy.Epoch, ConfigLoader.Parse(ConfigWriter.ToYaml(config), "resolved.yml").SaveStrategy);
        var e = Assert.Throws<UserError>(() => ConfigLoader.Parse(yaml.Replace("save_strategy: epoch", "save_strategy: hourly"), "c.yml"));
        Assert.Equal("c.yml:6:16: 'save_strategy' must be one of no, steps, epoch, not 'hourly'.", e.Message);
        var schema = ConfigWriter.Schema()["properties"]!["save_strategy"]!;
        Assert.Equal(["no", "steps", "epoch"], schema["enum"]!.AsArray().Select(v => (string)v!));
        Assert.Equal("steps", (string)schema["default"]!);
    }
}
