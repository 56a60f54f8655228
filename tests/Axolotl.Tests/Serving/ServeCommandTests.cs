using System.Net;
using System.Net.Sockets;
using Axolotl.Tests.Reliability;

namespace Axolotl.Tests.Serving;

/// <summary>`axolotl serve` and `axolotl inference --gradio` on the command line: their flags and their one-sentence errors.</summary>
[Collection(CapturedConsole.Name)]
public class ServeCommandTests
{
    static string Config(TempDir dir)
    {
        File.WriteAllText(dir["alpaca.json"], """[{"instruction": "Say hi.", "input": "", "output": "hi"}]""");
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {ServedModel.BaseModel}
            tokenizer_config: {ServedModel.TokenizerDir}
            bf16: false
            datasets:
              - path: {dir["alpaca.json"]}
                type: alpaca
            learning_rate: 0.001
            output_dir: {dir["out"]}
            """);
        return dir["config.yml"];
    }

    [Theory]
    [InlineData("serve")]
    [InlineData("inference")]
    public void A_port_in_use_is_one_sentence_naming_it(string command)
    {
        using var dir = TestSetup.TempDir();
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port.ToString();
        string[] args = command == "serve" ? ["serve", Config(dir), "--port", port] : ["inference", Config(dir), "--gradio", "--port", port];
        // Loading the model prints its lines first; the error is then one sentence, no stack trace.
        var (code, _, stderr) = InProcessCli.Run(args);
        Assert.Equal(2, code);
        Assert.DoesNotContain("   at ", stderr);
        var last = stderr.Trim().Split('\n')[^1];
        Assert.StartsWith($"error: cannot listen on 127.0.0.1:{port}", last);
        Assert.EndsWith("Choose another --port.", last);
    }

    /// <summary>Axolotl's gradio_server_port is where `inference --gradio` listens when --port is not given: a taken
    /// port named in the config is the one the error names.</summary>
    [Fact]
    public void Gradio_server_port_from_the_config_is_used_without_a_flag()
    {
        using var dir = TestSetup.TempDir();
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;
        var config = Config(dir);
        File.AppendAllText(config, $"\ngradio_server_port: {port}\ngradio_server_name: 127.0.0.1\ngradio_title: Bot\n");
        var (code, _, stderr) = InProcessCli.Run("inference", config, "--gradio");
        Assert.Equal(2, code);
        Assert.StartsWith($"error: cannot listen on 127.0.0.1:{port}", stderr.Trim().Split('\n')[^1]);
    }

    [Theory]
    [InlineData("--port", "http", "--port needs a port number")]
    [InlineData("--port", "70000", "--port needs a port number")]
    [InlineData("--host", "example.com", "--host must be an IP address")]
    public void Bad_flags_are_one_sentence(string flag, string value, string expected)
    {
        using var dir = TestSetup.TempDir();
        InProcessCli.AssertUserError(InProcessCli.Run("serve", Config(dir), flag, value), expected);
    }
}
