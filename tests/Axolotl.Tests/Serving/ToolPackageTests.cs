using System.Diagnostics;

namespace Axolotl.Tests.Serving;

/// <summary>
/// The .NET tool as a user gets it: packed, installed into a tool path, run from a folder outside the repository. It
/// must carry TorchSharp's native libraries (and patch them where the GLIBCXX fix is needed), the bundled chat
/// templates and the examples.
/// </summary>
public class ToolPackageTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Axolotl.sln"))) return dir.FullName;
        throw new InvalidOperationException("repository root (Axolotl.sln) not found above " + AppContext.BaseDirectory);
    }

    static async Task<(int Code, string Stdout, string Stderr)> Run(string workingDirectory, string file, params string[] args)
    {
        var start = new ProcessStartInfo(file) { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) start.ArgumentList.Add(a);
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(15));
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(' ', args)} ran over 15 minutes");
        }
        return (process.ExitCode, await stdout, await stderr);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public async Task Packed_tool_installs_and_runs_validate_and_a_chat_inference_outside_the_repository()
    {
        using var dir = TestSetup.TempDir();
        var (code, stdout, stderr) = await Run(RepoRoot(), "dotnet", "pack", "src/Axolotl.Cli", "-c", "Release", "-o", dir["nupkg"]);
        Assert.True(code == 0, $"pack: {stderr}\n{stdout}");
        (code, stdout, stderr) = await Run(dir.Path, "dotnet", "tool", "install", "--tool-path", dir["tools"], "--add-source", dir["nupkg"], "Axolotl.Cli");
        Assert.True(code == 0, $"tool install: {stderr}\n{stdout}");
        var axolotl = Path.Combine(dir["tools"], "axolotl");

        Directory.CreateDirectory(dir["work"]);
        (code, stdout, stderr) = await Run(dir["work"], axolotl, "fetch", "examples");
        Assert.True(code == 0, $"fetch examples: {stderr}\n{stdout}");
        (code, stdout, stderr) = await Run(dir["work"], axolotl, "validate", "examples/quickstart.yml");
        Assert.True(code == 0, $"validate: {stderr}\n{stdout}");
        Assert.Contains("examples/quickstart.yml: valid", stdout);

        // Loads libtorch from the tool's folder and renders a bundled template (chatml).
        File.WriteAllText(Path.Combine(dir["work"], "chat.yml"), """
            base_model: examples/models/tiny-llama-text
            datasets:
              - path: examples/data/alpaca_en_demo_300.json
                type: alpaca
            learning_rate: 0.001
            chat_template: chatml
            """);
        (code, stdout, stderr) = await Run(dir["work"], axolotl, "inference", "chat.yml", "--chat", "--prompt", "Name a colour.", "--max-new-tokens", "4", "--temperature", "0");
        Assert.True(code == 0, $"inference: {stderr}\n{stdout}");
        Assert.False(string.IsNullOrWhiteSpace(stdout), stderr);
        output.WriteLine($"answer through the installed tool: {stdout.Trim()}");
    }
}
