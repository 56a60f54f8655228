using Axolotl.Config;

namespace Axolotl.Tests.Trackers;

/// <summary>W&B, QAT, fp8, NVFP4, GPTQ and LLM Compressor are refused by name, each with the reason.</summary>
public class RefusedOnPurposeTests
{
    [Theory]
    [InlineData("wandb_project: p", "use_tensorboard: true or mlflow_tracking_uri")]
    [InlineData("use_wandb: true", "offline format")]
    [InlineData("qat:\n  weight_dtype: int4", "torchao")]
    [InlineData("fp8: true", "FP8 tensor cores")]
    [InlineData("nvfp4_merge_aware: true", "Blackwell")]
    [InlineData("gptq: true", "auto-gptq")]
    [InlineData("llmcompressor:\n  recipe: r.yaml", "llmcompressor library")]
    public void The_key_is_refused_with_its_reason_in_one_sentence(string yaml, string reason)
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], $"base_model: m\ndatasets:\n  - path: d.jsonl\nlearning_rate: 0.001\n{yaml}\n");
        var e = Assert.Throws<UnsupportedKeysError>(() => ConfigLoader.Load(dir["c.yml"]));
        Assert.Contains("is refused on purpose: ", e.Message);
        Assert.Contains(reason, e.Message);
        Assert.Single(e.Message.Split('\n'));
        Assert.Equal([yaml.Split(':')[0]], e.Keys);
    }

    [Fact]
    public void With_other_refused_keys_each_on_purpose_one_carries_its_reason()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], "base_model: m\ndatasets:\n  - path: d.jsonl\nlearning_rate: 0.001\nwandb_project: p\nuse_trackio: true\n");
        var e = Assert.Throws<UnsupportedKeysError>(() => ConfigLoader.Load(dir["c.yml"]));
        Assert.Contains("'wandb_project: p' (5:1) [refused on purpose: W&B", e.Message);
        Assert.Contains("'use_trackio: true' (6:1);", e.Message);
    }

    [Fact]
    public void The_streamed_sft_example_loads()
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", "streaming__sft.yaml"));
        Assert.True(c.Streaming);
        Assert.Empty(c.PretrainingDataset);
        Assert.Equal(1000, c.MaxSteps);
    }
}
