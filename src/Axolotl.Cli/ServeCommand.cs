using Axolotl.Config;
using Axolotl.Inference;
using Axolotl.Serving;

namespace Axolotl.Cli;

/// <summary>
/// <c>axolotl serve config.yml [--port 7860] [--host 127.0.0.1]</c>, also reached as <c>axolotl inference config.yml --gradio</c>
/// (Axolotl's browser UI): the trained model behind a chat page and an OpenAI-compatible API until Ctrl-C.
/// </summary>
static class ServeCommand
{
    public const int DefaultPort = 7860;

    /// <summary>Removes serve's own flags (--port, --host, and inference's --gradio) from the overrides.</summary>
    public static (string? Host, int? Port) TakeFlags(List<string> args)
    {
        string? host = null;
        int? port = null;
        for (int i = 0; i < args.Count; i++)
        {
            if (args[i] == "--gradio") { args.RemoveAt(i--); continue; }
            var name = args[i].StartsWith("--") ? args[i][2..].Split('=')[0] : "";
            if (name is not ("port" or "host")) continue;
            bool inline = args[i].Contains('=');
            if (!inline && i + 1 >= args.Count) throw new UserError($"--{name} needs a value.");
            var value = inline ? args[i][(args[i].IndexOf('=') + 1)..] : args[i + 1];
            if (name == "host")
            {
                // Before the model loads: a host name is a mistake to hear about at once.
                if (!System.Net.IPAddress.TryParse(value, out _) && value != "localhost")
                    throw new UserError($"--host must be an IP address to listen on (127.0.0.1, 0.0.0.0, ::), not '{value}'.");
                host = value;
            }
            else if (int.TryParse(value, out var number) && number is >= 0 and <= 65535) port = number;
            else throw new UserError($"--port needs a port number (0 to 65535), not '{value}'.");
            args.RemoveRange(i, inline ? 1 : 2);
            i--;
        }
        return (host, port);
    }

    /// <param name="flags">--host and --port when given; otherwise the config's gradio_server_name and gradio_server_port.</param>
    public static int Run(AxolotlConfig config, (string? Host, int? Port) flags)
    {
        var at = (Host: flags.Host ?? config.GradioServerName ?? "127.0.0.1", Port: flags.Port ?? config.GradioServerPort ?? DefaultPort);
        if (config.GradioShare == true)
            Console.Error.WriteLine("warning: gradio_share: there is no public share link here (Gradio's tunnel); the page is served on the host and port only.");
        var defaults = new ChatPage();
        var page = new ChatPage(config.GradioTitle ?? defaults.Title, config.GradioMaxNewTokens ?? defaults.MaxNewTokens, config.GradioTemperature ?? defaults.Temperature);
        using var client = AxolotlChatClient.Load(config, new StderrReporter());
        var server = ChatServer.StartAsync(client, at.Host, at.Port, line => Console.Error.WriteLine(line), page).GetAwaiter().GetResult();
        try
        {
            if (!System.Net.IPAddress.TryParse(at.Host, out var ip) || !System.Net.IPAddress.IsLoopback(ip))
                Console.Error.WriteLine($"warning: listening on {at.Host}: anyone who can reach this machine on port {server.Address.Port} can use the model and its API; there is no authentication.");
            Console.WriteLine($"Serving {client.ModelId} at {server.Address} : chat page at /, OpenAI-compatible API at {server.Address}v1 (Ctrl-C stops).");
            server.WaitForShutdownAsync().GetAwaiter().GetResult();
        }
        finally
        {
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        return 0;
    }
}
