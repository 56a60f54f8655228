using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.Inference;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Axolotl.Serving;

/// <summary>The chat page's title and its initial max tokens and temperature (Axolotl's gradio_* keys; the defaults of
/// the last two are Axolotl's).</summary>
public sealed record ChatPage(string Title = "Axolotl.NET chat", int MaxNewTokens = 1024, double Temperature = 0.9)
{
    static readonly string Template = ReadTemplate();

    static string ReadTemplate()
    {
        using var stream = typeof(ChatPage).Assembly.GetManifestResourceStream("Axolotl.Serving.index.html")!;
        return new StreamReader(stream).ReadToEnd();
    }

    internal byte[] Render()
    {
        var title = System.Net.WebUtility.HtmlEncode(Title);
        return System.Text.Encoding.UTF8.GetBytes(Template
            .Replace("<title>Axolotl.NET chat</title>", $"<title>{title}</title>")
            .Replace("<h1>Axolotl.NET · ", $"<h1>{title} · ")
            .Replace("id=\"temperature\" type=\"number\" min=\"0\" max=\"2\" step=\"0.1\" value=\"0.9\"",
                     $"id=\"temperature\" type=\"number\" min=\"0\" max=\"2\" step=\"0.1\" value=\"{Temperature.ToString(System.Globalization.CultureInfo.InvariantCulture)}\"")
            .Replace("id=\"max-tokens\" type=\"number\" min=\"1\" step=\"1\" value=\"256\"", $"id=\"max-tokens\" type=\"number\" min=\"1\" step=\"1\" value=\"{MaxNewTokens}\""));
    }
}

/// <summary>
/// <c>axolotl serve</c>: an OpenAI-compatible API (<c>POST /v1/chat/completions</c>, <c>POST /v1/completions</c>,
/// <c>GET /v1/models</c>) and a chat page at <c>/</c> over one <see cref="AxolotlChatClient"/>. Generations run one at
/// a time in arrival order; requests beyond the client's queue get 503; a client that disconnects stops its generation.
/// </summary>
public sealed class ChatServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly AxolotlChatClient _client;

    /// <summary>Where the server listens, e.g. http://127.0.0.1:7860/.</summary>
    public Uri Address { get; }

    ChatServer(WebApplication app, AxolotlChatClient client, Uri address) => (_app, _client, Address) = (app, client, address);

    /// <summary>Starts listening on <paramref name="host"/>:<paramref name="port"/> (port 0: a free one). <paramref name="log"/> gets one line per request.</summary>
    public static async Task<ChatServer> StartAsync(AxolotlChatClient client, string host = "127.0.0.1", int port = 7860, Action<string>? log = null, ChatPage? page = null)
    {
        var pageBytes = (page ?? new ChatPage()).Render();
        if (!IPAddress.TryParse(host, out var ip) && host != "localhost")
            throw new UserError($"--host must be an IP address to listen on (127.0.0.1, 0.0.0.0, ::), not '{host}'.");
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = 4 << 20;
            if (ip is null) k.ListenLocalhost(port);
            else k.Listen(ip, port);
        });
        var app = builder.Build();
        var api = new OpenAiEndpoints(client, log ?? (_ => { }));
        app.MapGet("/", (HttpContext c) => Page(c, pageBytes));
        app.MapGet("/index.html", (HttpContext c) => Page(c, pageBytes));
        app.MapGet("/v1/models", api.Models);
        app.MapGet("/v1/models/{**id}", api.Model);
        app.MapPost("/v1/chat/completions", api.ChatCompletions);
        app.MapPost("/v1/completions", api.Completions);
        app.MapFallback(async (HttpContext c) =>
        {
            await OpenAiEndpoints.Error(c, c.Request.Path.StartsWithSegments("/v1") && c.Request.Method != "GET" && c.Request.Method != "POST" ? 405 : 404,
                $"Invalid URL ({c.Request.Method} {c.Request.Path}).", "invalid_request_error", null, null);
        });
        try { await app.StartAsync(); }
        catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException || e.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
        {
            await app.DisposeAsync();
            throw new UserError($"cannot listen on {host}:{port}: {e.Message.Split('\n')[0]} Choose another --port.");
        }
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new ChatServer(app, client, new Uri(bound.Replace("[::]", "localhost").Replace("0.0.0.0", "127.0.0.1") + "/"));
    }

    static Task Page(HttpContext c, byte[] page)
    {
        c.Response.ContentType = "text/html; charset=utf-8";
        // Everything the page needs is in it: no CDN, no other request but the API's.
        c.Response.Headers.ContentSecurityPolicy = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'";
        return c.Response.Body.WriteAsync(page).AsTask();
    }

    /// <summary>Completes when the server stops (Ctrl-C or SIGTERM in a console, or <paramref name="cancellationToken"/>).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    /// <summary>Stops listening; generations in flight are cancelled as their connections close.</summary>
    public async ValueTask DisposeAsync()
    {
        using (var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
            await _app.StopAsync(timeout.Token);
        await _app.DisposeAsync();
    }
}

/// <summary>The API's handlers, answering in OpenAI's shapes (bodies, SSE chunks, error JSON and status codes).</summary>
sealed class OpenAiEndpoints(AxolotlChatClient client, Action<string> log)
{
    // Plain quotes and apostrophes, as OpenAI writes them; the page shows text with textContent, never as HTML.
    static readonly JsonSerializerOptions Compact = new() { WriteIndented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    JsonObject ModelObject() => new() { ["id"] = client.ModelId, ["object"] = "model", ["created"] = _created, ["owned_by"] = "axolotl.net" };

    public Task Models(HttpContext c) => Json(c, 200, new JsonObject { ["object"] = "list", ["data"] = new JsonArray(ModelObject()) });

    public Task Model(HttpContext c, string id) =>
        id == client.ModelId ? Json(c, 200, ModelObject()) : ModelNotFound(c, id);

    Task ModelNotFound(HttpContext c, string id) =>
        Error(c, 404, $"The model `{id}` does not exist. This server serves `{client.ModelId}` (GET /v1/models).", "invalid_request_error", "model", "model_not_found");

    public Task ChatCompletions(HttpContext c) => Handle(c, chat: true);

    public Task Completions(HttpContext c) => Handle(c, chat: false);

    /// <summary>A request's mistake: answered with 400 (or the given status) and OpenAI's error object.</summary>
    sealed class BadRequest(string message, string? param, int status = 400, string? code = null) : Exception(message)
    {
        public string? Param { get; } = param;
        public int Status { get; } = status;
        public string? Code { get; } = code;
    }

    async Task Handle(HttpContext c, bool chat)
    {
        var started = DateTime.UtcNow;
        AxolotlChatClient.Request request;
        bool stream, includeUsage;
        try
        {
            var body = await ReadBody(c);
            var model = body["model"] is JsonValue m && m.TryGetValue<string>(out var name) ? name
                : throw new BadRequest("you must provide a model parameter.", "model");
            if (model != client.ModelId) { await ModelNotFound(c, model); return; }
            stream = Bool(body, "stream") ?? false;
            includeUsage = body["stream_options"] is JsonObject so && Bool(so, "include_usage") == true;
            if (Number(body, "n") is double n && n != 1) throw new BadRequest("only n = 1 is supported: one answer per request.", "n");
            var options = Options(body);
            try
            {
                request = chat
                    ? client.PrepareChat(Messages(body), options)
                    : client.PrepareCompletion(Prompt(body), options);
            }
            catch (ArgumentException e) { throw new BadRequest(e.Message.Split(" (Parameter")[0], e.ParamName); }
            if (!client.Enqueue(request, c.RequestAborted, wait: false))
                throw new BadRequest($"the server is busy: {client.QueuedRequests} requests are already waiting for this model. Retry later.", null, 503, "server_busy");
        }
        catch (BadRequest e)
        {
            log($"{c.Request.Method} {c.Request.Path} → {e.Status}: {e.Message}");
            await Error(c, e.Status, e.Message, e.Status == 503 ? "server_error" : "invalid_request_error", e.Param, e.Code);
            return;
        }
        var kind = chat ? "chat.completion" : "text_completion";
        try
        {
            if (stream) await Stream(c, request, chat, includeUsage);
            else await Whole(c, request, chat);
            log($"{c.Request.Method} {c.Request.Path} → 200 {(stream ? "stream" : kind)}, {request.PromptIds.Count} prompt tokens, {(DateTime.UtcNow - started).TotalSeconds:F1} s");
        }
        catch (OperationCanceledException) when (c.RequestAborted.IsCancellationRequested)
        {
            log($"{c.Request.Method} {c.Request.Path}: the client disconnected; its generation stopped.");
        }
        catch (Exception e)
        {
            log($"{c.Request.Method} {c.Request.Path} → 500: {e.GetType().Name}: {e.Message.Split('\n')[0]}");
            if (!c.Response.HasStarted) await Error(c, 500, e is UserError ? e.Message : $"generation failed: {e.Message.Split('\n')[0]}", "server_error", null, null);
        }
    }

    async Task Whole(HttpContext c, AxolotlChatClient.Request request, bool chat)
    {
        var text = new StringBuilder();
        ChatResponseUpdate? last = null;
        await foreach (var update in client.Stream(request, c.RequestAborted))
        {
            text.Append(update.Text);
            last = update;
        }
        var (reason, usage) = Ending(last!);
        var choice = chat
            ? new JsonObject { ["index"] = 0, ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = text.ToString(), ["refusal"] = null }, ["logprobs"] = null, ["finish_reason"] = reason }
            : new JsonObject { ["index"] = 0, ["text"] = text.ToString(), ["logprobs"] = null, ["finish_reason"] = reason };
        await Json(c, 200, new JsonObject
        {
            ["id"] = Id(request, chat), ["object"] = chat ? "chat.completion" : "text_completion", ["created"] = request.Created.ToUnixTimeSeconds(),
            ["model"] = client.ModelId, ["choices"] = new JsonArray(choice), ["usage"] = usage,
        });
    }

    /// <summary>Server-sent events as OpenAI sends them: the role first, then content deltas, the finish reason, usage if asked, [DONE].</summary>
    async Task Stream(HttpContext c, AxolotlChatClient.Request request, bool chat, bool includeUsage)
    {
        c.Response.StatusCode = 200;
        c.Response.ContentType = "text/event-stream; charset=utf-8";
        c.Response.Headers.CacheControl = "no-cache";
        c.Response.Headers["X-Accel-Buffering"] = "no";
        JsonObject Chunk(JsonObject choice) => new()
        {
            ["id"] = Id(request, chat), ["object"] = chat ? "chat.completion.chunk" : "text_completion", ["created"] = request.Created.ToUnixTimeSeconds(),
            ["model"] = client.ModelId, ["choices"] = new JsonArray(choice),
        };
        JsonObject Delta(JsonObject delta, string? finish) => chat
            ? new JsonObject { ["index"] = 0, ["delta"] = delta, ["logprobs"] = null, ["finish_reason"] = finish }
            : new JsonObject { ["index"] = 0, ["text"] = (string?)delta["content"] ?? "", ["logprobs"] = null, ["finish_reason"] = finish };
        if (chat) await Event(c, Chunk(Delta(new JsonObject { ["role"] = "assistant", ["content"] = "" }, null)));
        await c.Response.Body.FlushAsync(c.RequestAborted);
        ChatResponseUpdate? last = null;
        try
        {
            await foreach (var update in client.Stream(request, c.RequestAborted))
            {
                last = update;
                if (update.FinishReason is null && update.Text.Length > 0)
                    await Event(c, Chunk(Delta(new JsonObject { ["content"] = update.Text }, null)));
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // The status is sent already: the error goes in the stream, as OpenAI reports mid-stream failures.
            await Event(c, new JsonObject { ["error"] = ErrorObject(e is UserError ? e.Message : $"generation failed: {e.Message.Split('\n')[0]}", "server_error", null, null) });
            await Done(c);
            return;
        }
        var (reason, usage) = Ending(last!);
        var final = Chunk(Delta([], reason));
        if (includeUsage) final["usage"] = null;
        await Event(c, final);
        if (includeUsage)
        {
            var usageChunk = Chunk(new JsonObject());
            usageChunk["choices"] = new JsonArray();
            usageChunk["usage"] = usage;
            await Event(c, usageChunk);
        }
        await Done(c);
    }

    static string Id(AxolotlChatClient.Request request, bool chat) => chat ? request.Id : "cmpl-" + request.Id["chatcmpl-".Length..];

    static (string Reason, JsonObject Usage) Ending(ChatResponseUpdate last)
    {
        var usage = last.Contents.OfType<UsageContent>().Single().Details;
        return (last.FinishReason == ChatFinishReason.Length ? "length" : "stop", new JsonObject
        {
            ["prompt_tokens"] = usage.InputTokenCount, ["completion_tokens"] = usage.OutputTokenCount, ["total_tokens"] = usage.TotalTokenCount,
        });
    }

    static async Task Event(HttpContext c, JsonObject data)
    {
        await c.Response.WriteAsync("data: " + data.ToJsonString(Compact) + "\n\n", c.RequestAborted);
        await c.Response.Body.FlushAsync(c.RequestAborted);
    }

    static async Task Done(HttpContext c)
    {
        await c.Response.WriteAsync("data: [DONE]\n\n", c.RequestAborted);
        await c.Response.Body.FlushAsync(c.RequestAborted);
    }

    static async Task<JsonObject> ReadBody(HttpContext c)
    {
        try
        {
            return await JsonNode.ParseAsync(c.Request.Body, cancellationToken: c.RequestAborted) as JsonObject
                ?? throw new BadRequest("the request body must be a JSON object.", null);
        }
        catch (JsonException e)
        {
            throw new BadRequest($"We could not parse the JSON body of your request: {e.Message.Split(" Path:")[0]}", null);
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e) when (e.StatusCode == 413)
        {
            throw new BadRequest("the request body is larger than 4 MiB.", null, 413);
        }
    }

    static ChatOptions Options(JsonObject body)
    {
        var options = new ChatOptions();
        if (Number(body, "temperature") is double t) options.Temperature = (float)t;
        if (Number(body, "top_p") is double p) options.TopP = (float)p;
        if (Whole(body, "top_k") is long k) options.TopK = (int)Math.Clamp(k, int.MinValue, int.MaxValue);
        if (Whole(body, "seed") is long seed) options.Seed = seed;
        var max = Whole(body, "max_completion_tokens") ?? Whole(body, "max_tokens");
        if (max is long m) options.MaxOutputTokens = (int)Math.Clamp(m, int.MinValue, int.MaxValue);
        switch (body["stop"])
        {
            case null: break;
            case JsonValue one when one.TryGetValue<string>(out var s): options.StopSequences = [s]; break;
            case JsonArray many when many.Count <= 4 && many.All(x => x is JsonValue v && v.TryGetValue<string>(out _)):
                options.StopSequences = many.Select(x => x!.GetValue<string>()).ToList();
                break;
            default: throw new BadRequest("stop must be a string or a list of at most 4 strings.", "stop");
        }
        return options;
    }

    static List<ChatMessage> Messages(JsonObject body)
    {
        if (body["messages"] is not JsonArray messages || messages.Count == 0)
            throw new BadRequest("messages must be a non-empty list of {role, content} objects.", "messages");
        var list = new List<ChatMessage>();
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i] is not JsonObject m) throw new BadRequest($"messages[{i}] must be an object with role and content.", $"messages[{i}]");
            var role = m["role"] is JsonValue r && r.TryGetValue<string>(out var rs) ? rs : null;
            var chatRole = role switch
            {
                "user" => ChatRole.User,
                "assistant" => ChatRole.Assistant,
                "system" or "developer" => ChatRole.System,
                _ => throw new BadRequest($"messages[{i}].role must be one of system, developer, user, assistant, not {(role is null ? "missing" : $"'{role}'")}.", $"messages[{i}].role"),
            };
            var content = m["content"] switch
            {
                JsonValue v when v.TryGetValue<string>(out var s) => s,
                null when chatRole == ChatRole.Assistant => "",
                JsonArray parts when parts.All(p => p is JsonObject po && (string?)po["type"] == "text" && po["text"] is JsonValue) =>
                    string.Concat(parts.Select(p => (string?)p!["text"])),
                JsonArray => throw new BadRequest($"messages[{i}].content: only text parts are supported ({{\"type\": \"text\", \"text\": ...}}).", $"messages[{i}].content"),
                _ => throw new BadRequest($"messages[{i}].content must be a string or a list of text parts.", $"messages[{i}].content"),
            };
            list.Add(new ChatMessage(chatRole, content));
        }
        return list;
    }

    static string Prompt(JsonObject body) => body["prompt"] switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonArray { Count: 1 } one when one[0] is JsonValue v && v.TryGetValue<string>(out var s) => s,
        JsonArray { Count: > 1 } => throw new BadRequest("only one prompt per request is supported.", "prompt"),
        _ => throw new BadRequest("prompt must be a string.", "prompt"),
    };

    static double? Number(JsonObject body, string key) => body[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number => v.GetValue<double>(),
        _ => throw new BadRequest($"{key} must be a number.", key),
    };

    static long? Whole(JsonObject body, string key) => Number(body, key) switch
    {
        null => null,
        double d when d == Math.Floor(d) && Math.Abs(d) < 9e15 => (long)d,
        var d => throw new BadRequest($"{key} must be a whole number, not {d?.ToString(CultureInfo.InvariantCulture)}.", key),
    };

    static bool? Bool(JsonObject body, string key) => body[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() is JsonValueKind.True or JsonValueKind.False => v.GetValue<bool>(),
        _ => throw new BadRequest($"{key} must be true or false.", key),
    };

    static JsonObject ErrorObject(string message, string type, string? param, string? code) =>
        new() { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = code };

    public static Task Error(HttpContext c, int status, string message, string type, string? param, string? code)
    {
        if (status == 503) c.Response.Headers.RetryAfter = "1";
        return Json(c, status, new JsonObject { ["error"] = ErrorObject(message, type, param, code) });
    }

    static async Task Json(HttpContext c, int status, JsonObject body)
    {
        c.Response.StatusCode = status;
        c.Response.ContentType = "application/json";
        await c.Response.WriteAsync(body.ToJsonString(Compact), c.RequestAborted);
    }
}
