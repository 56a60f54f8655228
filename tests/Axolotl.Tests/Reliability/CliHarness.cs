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
/// A fact that cannot be tested as root: root reads files whatever their mode, so chmod 000 makes nothing unreadable.
/// </summary>
public sealed class NotAsRootFactAttribute : FactAttribute
{
    [DllImport("libc", EntryPoint = "geteuid")]
    static extern uint GetEuid();

    public NotAsRootFactAttribute()
    {
        if (OperatingSystem.IsWindows()) Skip = "file modes are a POSIX test.";
        else if (GetEuid() == 0) Skip = "running as root, where chmod 000 does not stop reads; run the tests as a normal user to cover this case.";
    }
}
