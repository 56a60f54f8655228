namespace Axolotl.Tests.EndToEnd;

/// <summary>Config warnings and resolved values as the `axolotl` process prints them.</summary>
public class ConfigCommandTests
{
    const string Config = """
        base_model: some/model
        datasets:
          - path: data.jsonl
            type: alpaca
        learning_rate: 0.0002
        micro_batch_size: 2
        batch_size: 8
        flash_attention: true
        """;

    [Fact]
    public void Validate_prints_warnings_then_resolved_values_with_their_sources()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config);
        var (code, stdout, stderr) = BadInputTests.RunCli("validate", dir["c.yml"], "--activation-offloading");
        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        var lines = stdout.Split('\n');
        Assert.StartsWith($"warning: {dir["c.yml"]}:8:1: 'flash_attention: true' is Axolotl's legacy flag", lines[0]);
        Assert.StartsWith("warning: --activation-offloading: 'activation_offloading: true' only saves GPU memory", lines[1]);
        Assert.Contains(lines, l => l.StartsWith("gradient_accumulation_steps ") && l.EndsWith("  4  (batch_size ÷ micro_batch_size)"));
        Assert.Contains(lines, l => l.StartsWith("attn_implementation ") && l.EndsWith("  sdpa  (flash_attention → flash_attention_2 → sdpa)"));
        Assert.Contains(lines, l => l.StartsWith("learning_rate ") && l.EndsWith("  0.0002  (5:1)"));
        Assert.Contains($"{dir["c.yml"]}: valid, with 2 warning(s) above.", stdout);
    }

    [Fact]
    public void Train_prints_the_warnings_before_it_starts()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config.Replace("some/model", dir["no-such-model"]) + $"\noutput_dir: {dir["out"]}\n");
        var (code, stdout, stderr) = BadInputTests.RunCli("train", dir["c.yml"]);
        Assert.Equal(2, code);
        Assert.StartsWith($"warning: {dir["c.yml"]}:8:1: 'flash_attention: true'", stdout);
        Assert.Contains("no-such-model", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
    }
}
