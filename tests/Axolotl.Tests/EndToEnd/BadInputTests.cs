using System.Diagnostics;

namespace Axolotl.Tests.EndToEnd;

/// <summary>User mistakes through the real `axolotl` process: one clear sentence, exit code 2, no stack trace.</summary>
public class BadInputTests
{
    internal static (int Code, string Stdout, string Stderr) RunCli(params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "axolotl.dll"));
        foreach (var a in args) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr);
    }

    static string ValidConfig(TempDir dir, string data) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        tokenizer_config: {TestSetup.Data("tok-llama2")}
        datasets:
          - path: {data}
            type: alpaca
        sequence_len: 64
        learning_rate: 0.001
        max_steps: 1
        output_dir: {dir["out"]}
        """;

    static void AssertUserError(int code, string stderr, params string[] fragments)
    {
        Assert.Equal(2, code);
        Assert.DoesNotContain("   at ", stderr);
        Assert.Single(stderr.Trim().Split('\n'));
        foreach (var f in fragments) Assert.Contains(f, stderr);
    }

    [Fact]
    public void Missing_model_folder()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["data.json"], """[{"instruction": "a", "input": "", "output": "b"}]""");
        File.WriteAllText(dir["c.yml"], ValidConfig(dir, dir["data.json"]).Replace(TestSetup.Data("reference", "models", "tiny-llama"), dir["no-such-model"]));
        var (code, _, stderr) = RunCli("train", dir["c.yml"]);
        AssertUserError(code, stderr, "no-such-model", "does not exist");
    }

    [Fact]
    public void Dataset_row_without_instruction()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["data.jsonl"], "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"prompt\": \"a\", \"output\": \"b\"}\n");
        File.WriteAllText(dir["c.yml"], ValidConfig(dir, dir["data.jsonl"]));
        var (code, _, stderr) = RunCli("train", dir["c.yml"]);
        AssertUserError(code, stderr, "data.jsonl, line 2", "missing field 'instruction'");
    }

    [Fact]
    public void Yaml_typo()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], ValidConfig(dir, "x.json").Replace("learning_rate", "learnng_rate"));
        var (code, _, stderr) = RunCli("train", dir["c.yml"]);
        AssertUserError(code, stderr, "c.yml:7:1", "'learnng_rate'", "did you mean 'learning_rate'");
    }

    [Fact]
    public void Missing_config_file_and_unknown_command()
    {
        var (code, _, stderr) = RunCli("train", "/nonexistent/config.yml");
        AssertUserError(code, stderr, "/nonexistent/config.yml", "not found");
        (code, _, stderr) = RunCli("trian", "x.yml");
        AssertUserError(code, stderr, "unknown command 'trian'");
    }

    [Fact]
    public void Preprocess_debug_shows_masked_prompt_and_trained_response()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["data.json"], """[{"instruction": "Name a colour.", "input": "", "output": "Blue."}]""");
        File.WriteAllText(dir["c.yml"], ValidConfig(dir, dir["data.json"]));
        var (code, stdout, stderr) = RunCli("preprocess", dir["c.yml"], "--debug");
        Assert.True(code == 0, stderr);
        Assert.Contains("1 rows → 1 examples", stdout);
        Assert.Contains("<s>(-100, 1)", stdout);          // BOS of the masked prompt
        Assert.Contains("Response(-100,", stdout);         // the prompt's last words are masked
        Assert.Contains("</s>(2, 2)", stdout);             // EOS appended to the response and trained on
        Assert.Contains("\\n(-100, 13)", stdout);         // newlines shown escaped
        // Piped output is never hard-wrapped (Spectre's default would wrap at 80 columns) and has no colour codes:
        // the whole example, BOS to EOS, is one line.
        var tokens = stdout.Split('\n').Single(l => l.Contains("<s>(-100, 1)"));
        Assert.Contains("</s>(2, 2)", tokens);
        Assert.True(tokens.Length > 80, tokens);
        Assert.DoesNotContain('\u001b', stdout);
        var total = stdout.Split('\n').Single(l => l.StartsWith("Total input len: "));
        var labels = stdout.Split('\n').Single(l => l.StartsWith("Count of labels: "));
        Assert.True(int.Parse(total["Total input len: ".Length..]) > int.Parse(labels["Count of labels: ".Length..]));
    }
}
