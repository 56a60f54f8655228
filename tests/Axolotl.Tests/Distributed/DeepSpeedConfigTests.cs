using Axolotl.Distributed;

namespace Axolotl.Tests.Distributed;

/// <summary>The ZeRO stage as read from a deepspeed JSON, and what is refused with a reason.</summary>
public class DeepSpeedConfigTests
{
    [Fact]
    public void The_stage_comes_from_zero_optimization_and_stage_3_is_refused_with_the_reason()
    {
        using var dir = new TempDir();
        string Write(string name, string json) { File.WriteAllText(dir[name], json); return dir[name]; }
        var config = dir["config.yml"];
        // DeepSpeed's own files carry comments-free JSON with "auto" values; only the stage matters here.
        Assert.Equal(1, DeepSpeedConfig.ZeroStage(Write("z1.json", """{"zero_optimization": {"stage": 1, "overlap_comm": true}, "bf16": {"enabled": "auto"}}"""), config));
        Assert.Equal(2, DeepSpeedConfig.ZeroStage(Write("z2.json", """{"zero_optimization": {"stage": "2"}}"""), config));
        Assert.Equal(0, DeepSpeedConfig.ZeroStage(Write("none.json", """{"train_micro_batch_size_per_gpu": "auto"}"""), config));
        // Relative to the config file's folder when not found from the working directory.
        Assert.Equal(2, DeepSpeedConfig.ZeroStage("z2.json", config));
        var three = Assert.Throws<UserError>(() => DeepSpeedConfig.ZeroStage(Write("z3.json", """{"zero_optimization": {"stage": 3}}"""), config));
        Assert.Contains("ZeRO stage 3", three.Message);
        Assert.Contains("not built yet", three.Message);
        Assert.Contains("'deepspeed' names nowhere.json, which does not exist", Assert.Throws<UserError>(() => DeepSpeedConfig.ZeroStage("nowhere.json", config)).Message);
        Assert.Contains("not a DeepSpeed JSON", Assert.Throws<UserError>(() => DeepSpeedConfig.ZeroStage(Write("bad.json", "{ stage"), config)).Message);
    }
}

[Collection(Reliability.CapturedConsole.Name)]
public class FetchDeepSpeedConfigsTests
{
    [Fact]
    public void Fetch_deepspeed_configs_writes_the_stages_built_here_and_they_read_back()
    {
        using var dir = new TempDir();
        var (code, stdout, stderr) = Reliability.InProcessCli.Run("fetch", "deepspeed_configs", "--dest", dir.Path);
        Assert.True(code == 0, stderr);
        Assert.Contains("zero2.json", stdout);
        Assert.Equal(1, DeepSpeedConfig.ZeroStage(Path.Combine(dir.Path, "zero1.json"), dir["c.yml"]));
        Assert.Equal(2, DeepSpeedConfig.ZeroStage(Path.Combine(dir.Path, "zero2.json"), dir["c.yml"]));
        Assert.False(File.Exists(Path.Combine(dir.Path, "zero3.json")));
    }
}
