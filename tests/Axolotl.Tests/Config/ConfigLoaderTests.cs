using Axolotl.Config;

namespace Axolotl.Tests.Config;

public class ConfigLoaderTests
{
    const string Minimal = """
        base_model: some/model
        datasets:
          - path: data.jsonl
            type: alpaca
        learning_rate: 0.0002
        """;

    static AxolotlConfig Parse(string yaml, params string[] overrides) => ConfigLoader.Parse(yaml, "cfg.yml", overrides);

    [Fact]
    public void Axolotl_defaults_apply_when_keys_are_absent()
    {
        var c = Parse(Minimal);
        Assert.Equal(512, c.SequenceLen);
        Assert.Equal(1, c.MicroBatchSize);
        Assert.Equal(1, c.GradientAccumulationSteps);
        Assert.Equal(42, c.Seed);
        Assert.Equal("cosine", c.LrScheduler);
        Assert.Equal("auto", c.Bf16);
        Assert.Equal("./model-out", c.OutputDir);
        Assert.False(c.TrainOnInputs);
        Assert.True(c.ShuffleMergedDatasets);
        Assert.Equal("alpaca", c.Datasets[0].Type);
    }

    [Fact]
    public void A_typo_names_the_key_its_position_and_the_closest_known_key()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal + "\nlora_alhpa: 16\n"));
        Assert.Contains("cfg.yml:6:1", e.Message);
        Assert.Contains("'lora_alhpa'", e.Message);
        Assert.Contains("did you mean 'lora_alpha'", e.Message);
    }

    [Fact]
    public void A_typo_inside_a_dataset_entry_is_caught_too()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal.Replace("type: alpaca", "typ: alpaca")));
        Assert.Contains("'typ'", e.Message);
        Assert.Contains("did you mean 'type'", e.Message);
    }

    [Fact]
    public void Yaml_syntax_errors_report_line_and_column()
    {
        var e = Assert.Throws<UserError>(() => Parse("base_model: x\ndatasets: [\n  - path: a\nlearning_rate: 1"));
        Assert.Matches(@"cfg\.yml:\d+:\d+: YAML syntax error", e.Message);
    }

    [Fact]
    public void Wrong_value_types_name_the_key_and_the_value()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal + "\nmicro_batch_size: two\n"));
        Assert.Contains("'micro_batch_size' must be a whole number, not 'two'", e.Message);
        Assert.Contains("cfg.yml:6:19", e.Message);
    }

    [Fact]
    public void Known_axolotl_keys_we_do_not_implement_are_refused_by_name_unless_empty()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal + "\nload_in_4bit: true\n"));
        Assert.Contains("'load_in_4bit'", e.Message);
        Assert.Contains("does not implement yet", e.Message);
        var ok = Parse(Minimal + "\nwandb_project:\nload_in_8bit: false\n");
        Assert.Equal("some/model", ok.BaseModel);
    }

    [Fact]
    public void Missing_required_keys_are_stated_in_axolotl_terms()
    {
        Assert.Contains("'learning_rate' is required", Assert.Throws<UserError>(() => Parse(Minimal.Replace("learning_rate: 0.0002", ""))).Message);
        Assert.Contains("'base_model' is required", Assert.Throws<UserError>(() => Parse(Minimal.Replace("base_model: some/model", ""))).Message);
        Assert.Contains("lora_r", Assert.Throws<UserError>(() => Parse(Minimal + "\nadapter: lora\nlora_alpha: 16\nlora_target_linear: true\n")).Message);
    }

    [Fact]
    public void Command_line_overrides_take_axolotl_forms()
    {
        var c = Parse(Minimal, "--learning-rate", "1e-4", "--micro_batch_size=2", "--train-on-inputs", "--no-shuffle-merged-datasets");
        Assert.Equal(1e-4, c.LearningRate);
        Assert.Equal(2, c.MicroBatchSize);
        Assert.True(c.TrainOnInputs);
        Assert.False(c.ShuffleMergedDatasets);
        Assert.Contains("cannot be overridden", Assert.Throws<UserError>(() => Parse(Minimal, "--datasets", "x")).Message);
        Assert.Contains("did you mean 'learning_rate'", Assert.Throws<UserError>(() => Parse(Minimal, "--learnin-rate", "1")).Message);
    }
}
