using System.Runtime.InteropServices;

namespace Axolotl.Tests.Reliability;

/// <summary>
/// Tests that swap Console.Out/Error to read what the CLI prints: they run alone (xunit runs such collections after the
/// parallel ones), since any test writing to the console beside them would land in the capture.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CapturedConsole
{
    public const string Name = "captured console";
}

/// <summary>The CLI's entry called in-process (no process start per case), with what it prints captured.</summary>
static class InProcessCli
{
    public static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var (stdout, stderr) = (Console.Out, Console.Error);
        using var capturedOut = new StringWriter();
        using var capturedErr = new StringWriter();
        Console.SetOut(capturedOut);
        Console.SetError(capturedErr);
        try
        {
            int code = Cli.Cli.Run(args);
            return (code, capturedOut.ToString(), capturedErr.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    /// <summary>A user mistake as the CLI must report it: exit code 2, one "error:" line, no stack trace.</summary>
    public static void AssertUserError((int Code, string Stdout, string Stderr) result, params string[] fragments)
    {
        var (code, _, stderr) = result;
        Assert.True(code == 2, $"exit code {code}, expected 2; stderr: {stderr}");
        Assert.DoesNotContain("   at ", stderr);
        Assert.DoesNotContain("This is a bug", stderr);
        var line = Assert.Single(stderr.Trim().Split('\n'));
        Assert.StartsWith("error: ", line);
        foreach (var f in fragments) Assert.Contains(f, line);
    }
}

/// <summary>
/// A fact about a file the CLI cannot read (mode 000). Root reads such files anyway through the CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH capabilities, so as root <see cref="UnreadableFileCli"/> runs the CLI as a child process without
/// them; the fact skips only where that cannot be done, saying why.
/// </summary>
public sealed class UnreadableFileFactAttribute : FactAttribute
{
    public UnreadableFileFactAttribute()
    {
        if (OperatingSystem.IsWindows()) Skip = "file modes are a POSIX test.";
        else if (UnreadableFileCli.CannotDropPrivileges is string why) Skip = why;
    }
}

/// <summary>The CLI run where a mode-000 file is unreadable to it: in-process for a normal user, as root in a child
/// process whose file-access capabilities setpriv(1) has dropped (the same uid, so every other file stays readable).</summary>
static class UnreadableFileCli
{
    [DllImport("libc", EntryPoint = "geteuid")]
    static extern uint GetEuid();

    static readonly string[] DropFileAccess =
        ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"];

    static bool IsRoot => !OperatingSystem.IsWindows() && GetEuid() == 0;

    /// <summary>Null when a mode-000 file can be made unreadable to the CLI; else the reason it cannot.</summary>
    public static readonly string? CannotDropPrivileges = IsRoot ? ProbeDrop() : null;

    static string? ProbeDrop()
    {
        var probe = Path.Combine(Path.GetTempPath(), $"axolotl-unreadable-probe-{Environment.ProcessId}");
        try
        {
            File.WriteAllText(probe, "x");
            File.SetUnixFileMode(probe, UnixFileMode.None);
            var (code, _, stderr) = Child(["cat", probe]);
            return code != 0 && stderr.Contains("Permission denied") ? null
                : $"running as root and 'setpriv {string.Join(' ', DropFileAccess)} cat' still read a mode-000 file (exit {code}: {stderr.Trim()}), so nothing can be made unreadable here.";
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return $"running as root, where only dropping CAP_DAC_OVERRIDE makes a mode-000 file unreadable, and setpriv (util-linux) cannot be started: {e.Message}.";
        }
        finally { File.Delete(probe); }
    }

    static (int, string, string) Child(IEnumerable<string> command)
    {
        var start = new System.Diagnostics.ProcessStartInfo("setpriv") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in DropFileAccess.Concat(command)) start.ArgumentList.Add(a);
        using var process = System.Diagnostics.Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr);
    }

    public static (int Code, string Stdout, string Stderr) Run(params string[] args) =>
        IsRoot ? Child(["dotnet", Path.Combine(AppContext.BaseDirectory, "axolotl.dll"), .. args]) : InProcessCli.Run(args);
}
