using System.ClientModel;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.Inference;
using Axolotl.Models;
using Axolotl.Serving;
using Axolotl.Tokenization;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using static TorchSharp.torch;
using ChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AiChatRole = Microsoft.Extensions.AI.ChatRole;
using AiFinish = Microsoft.Extensions.AI.ChatFinishReason;
using OpenAiFinish = OpenAI.Chat.ChatFinishReason;

namespace Axolotl.Tests.Serving;

/// <summary>One tiny model behind <c>axolotl serve</c> on a free loopback port, shared by the tests of <see cref="ServeTests"/>.</summary>
public sealed class ServedModel : IAsyncLifetime
{
    public static readonly string BaseModel = TestSetup.Data("reference", "models", "tiny-llama");
    public static readonly string TokenizerDir = TestSetup.Data("tok-tiny512");

    readonly TempDir _dir = TestSetup.TempDir();
    public AxolotlChatClient Client { get; private set; } = null!;
    public ChatServer Server { get; private set; } = null!;
    public ConcurrentQueue<string> Log { get; } = new();

    internal static AxolotlChatClient LoadClient(TempDir dir, int maxQueuedRequests = 64)
    {
        File.WriteAllText(dir["alpaca.json"], """[{"instruction": "Say hi.", "input": "", "output": "hi"}]""");
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {BaseModel}
            tokenizer_config: {TokenizerDir}
            bf16: false
            datasets:
              - path: {dir["alpaca.json"]}
                type: alpaca
            learning_rate: 0.001
            output_dir: {dir["out"]}
            """);
        return AxolotlChatClient.Load(AxolotlRuns.LoadConfig(dir["config.yml"]), maxQueuedRequests: maxQueuedRequests);
    }

    public async Task InitializeAsync()
    {
        Client = LoadClient(_dir);
        Server = await ChatServer.StartAsync(Client, "127.0.0.1", 0, Log.Enqueue);
    }

    public async Task DisposeAsync()
    {
        await Server.DisposeAsync();
        Client.Dispose();
        _dir.Dispose();
    }
}

/// <summary>
/// The IChatClient, the OpenAI-compatible API through the official OpenAI .NET client and raw HTTP, and the chat page
/// through a real Chromium. Answers are checked against the library's own greedy decode of the alpaca prompt
/// (Generation.Generate, itself pinned to transformers' generate elsewhere), computed here on a separate model instance.
/// </summary>
public class ServeTests(ServedModel served, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<ServedModel>
{
    static readonly Lazy<(CausalLM Model, Tokenizer Tokenizer)> Reference = new(() =>
        (CausalLM.FromPretrained(ServedModel.BaseModel, ScalarType.Float32, ScalarType.Float32), Tokenizer.FromFolder(ServedModel.TokenizerDir)));

    /// <summary>Greedy, with Axolotl's inference repetition penalty, as the served model decodes at temperature 0.</summary>
    static (string Text, int Tokens, bool Eos) Greedy(string instruction, int maxNewTokens)
    {
        var (model, tokenizer) = Reference.Value;
        lock (Reference)
        {
            using var scope = NewDisposeScope();
            int[] eos = [.. GenerationOptions.EosFromModelFolder(ServedModel.BaseModel), tokenizer.EosTokenId!.Value];
            var generated = Generation.Generate(model, tokenizer.Encode(AlpacaPrompt.Instruct(instruction, null)), new GenerationOptions
            {
                MaxNewTokens = maxNewTokens, RepetitionPenalty = 1.1, EosTokenIds = eos,
            });
            return (tokenizer.Decode(generated, skipSpecialTokens: true), generated.Count, eos.Contains(generated[^1]));
        }
    }

    Uri Api => new(served.Server.Address, "v1");

    ChatClient OpenAi() => new(served.Client.ModelId, new ApiKeyCredential("not-needed"), new OpenAIClientOptions { Endpoint = Api, NetworkTimeout = TimeSpan.FromMinutes(2) });

    [Fact]
    public async Task Chat_client_answers_greedily_as_the_generation_engine_does_streamed_or_whole()
    {
        var expected = Greedy("Name a colour.", 12);
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = 12 };
        var whole = await served.Client.GetResponseAsync([new ChatMessage(AiChatRole.User, "Name a colour.")], options);
        Assert.Equal(expected.Text, whole.Text);
        Assert.Equal(expected.Tokens, (int)whole.Usage!.OutputTokenCount!);
        Assert.Equal(expected.Eos ? AiFinish.Stop : AiFinish.Length, whole.FinishReason);

        var pieces = new List<string>();
        await foreach (var update in served.Client.GetStreamingResponseAsync([new ChatMessage(AiChatRole.User, "Name a colour.")], options))
            if (update.Text.Length > 0) pieces.Add(update.Text);
        Assert.True(pieces.Count > 1, $"one piece: '{string.Concat(pieces)}'");
        Assert.Equal(expected.Text, string.Concat(pieces));
    }

    [Fact]
    public async Task Stop_sequence_cuts_the_answer_before_it_and_a_seed_repeats_a_sample()
    {
        var full = Greedy("Name a colour.", 20).Text;
        var stop = full.Trim().Split(' ').Skip(2).First(w => w.Length > 1);
        var at = full.IndexOf(stop, StringComparison.Ordinal);
        var cut = await served.Client.GetResponseAsync("Name a colour.", new ChatOptions { Temperature = 0, MaxOutputTokens = 20, StopSequences = [stop] });
        Assert.Equal(full[..at], cut.Text);
        Assert.Equal(AiFinish.Stop, cut.FinishReason);

        var sampled = new ChatOptions { Temperature = 1.5f, TopK = 0, TopP = 1, Seed = 7, MaxOutputTokens = 16 };
        var first = await served.Client.GetResponseAsync("Name a colour.", sampled);
        var again = await served.Client.GetResponseAsync("Name a colour.", sampled);
        var other = await served.Client.GetResponseAsync("Name a colour.", new ChatOptions { Temperature = 1.5f, TopK = 0, TopP = 1, Seed = 8, MaxOutputTokens = 16 });
        Assert.Equal(first.Text, again.Text);
        Assert.NotEqual(first.Text, other.Text);
    }

    [Fact]
    public async Task Bad_options_are_argument_errors_naming_the_option()
    {
        var e = await Assert.ThrowsAsync<ArgumentException>(() => served.Client.GetResponseAsync("hi", new ChatOptions { MaxOutputTokens = 100_000 }));
        Assert.Equal("max_tokens", e.ParamName);
        Assert.Contains($"context is {served.Client.ContextLength} tokens", e.Message);
        e = await Assert.ThrowsAsync<ArgumentException>(() => served.Client.GetResponseAsync("hi", new ChatOptions { Temperature = -1 }));
        Assert.Equal("temperature", e.ParamName);
    }

    [Fact]
    public async Task OpenAI_client_gets_the_same_answer_whole_and_streamed()
    {
        var expected = Greedy("Name a colour.", 12);
        var chat = OpenAi();
        var options = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 12 };
        ChatCompletion completion = await chat.CompleteChatAsync([new UserChatMessage("Name a colour.")], options);
        Assert.Equal(expected.Text, completion.Content[0].Text);
        Assert.Equal(expected.Eos ? OpenAiFinish.Stop : OpenAiFinish.Length, completion.FinishReason);
        Assert.Equal(expected.Tokens, completion.Usage.OutputTokenCount);
        Assert.Equal(served.Client.ModelId, completion.Model);

        var text = new System.Text.StringBuilder();
        int updates = 0;
        OpenAiFinish? finish = null;
        await foreach (var update in chat.CompleteChatStreamingAsync([new UserChatMessage("Name a colour.")], options))
        {
            foreach (var part in update.ContentUpdate) { text.Append(part.Text); updates++; }
            finish ??= update.FinishReason;
        }
        Assert.True(updates > 1);
        Assert.Equal(expected.Text, text.ToString());
        Assert.NotNull(finish);
    }

    [Fact]
    public async Task OpenAI_client_sees_errors_with_their_status()
    {
        var unknown = new ChatClient("no-such-model", new ApiKeyCredential("x"), new OpenAIClientOptions { Endpoint = Api });
        var e = await Assert.ThrowsAsync<ClientResultException>(() => unknown.CompleteChatAsync([new UserChatMessage("hi")]));
        Assert.Equal(404, e.Status);
        Assert.Contains("no-such-model", e.Message);
        e = await Assert.ThrowsAsync<ClientResultException>(() => OpenAi().CompleteChatAsync([new UserChatMessage("hi")], new ChatCompletionOptions { MaxOutputTokenCount = 100_000 }));
        Assert.Equal(400, e.Status);
        Assert.Contains("max_tokens", e.Message);
    }

    [Theory]
    [InlineData("{\"model\": ", 400, null)]
    [InlineData("[1, 2]", 400, null)]
    [InlineData("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", 400, "model")]
    [InlineData("{\"model\": \"MODEL\", \"messages\": []}", 400, "messages")]
    [InlineData("{\"model\": \"MODEL\", \"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", 400, "messages[0].role")]
    [InlineData("{\"model\": \"MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": \"hot\"}", 400, "temperature")]
    [InlineData("{\"model\": \"MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_p\": 0}", 400, "top_p")]
    [InlineData("{\"model\": \"MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 3}", 400, "n")]
    [InlineData("{\"model\": \"MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 1e9}", 400, "max_tokens")]
    [InlineData("{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", 404, "model")]
    public async Task Bad_requests_get_OpenAI_shaped_errors(string body, int status, string? param)
    {
        using var http = new HttpClient { BaseAddress = served.Server.Address };
        using var response = await http.PostAsync("v1/chat/completions", new StringContent(body.Replace("MODEL", served.Client.ModelId), System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(status, (int)response.StatusCode);
        var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!["error"]!.AsObject();
        Assert.False(string.IsNullOrWhiteSpace((string?)error["message"]));
        Assert.Equal(status == 404 ? "model_not_found" : null, (string?)error["code"]);
        Assert.Equal("invalid_request_error", (string?)error["type"]);
        Assert.Equal(param, (string?)error["param"]);
    }

    [Fact]
    public async Task Models_and_completions_endpoints_answer_in_OpenAI_shapes()
    {
        using var http = new HttpClient { BaseAddress = served.Server.Address };
        var models = await http.GetFromJsonAsync<JsonObject>("v1/models");
        Assert.Equal("list", (string?)models!["object"]);
        Assert.Equal(served.Client.ModelId, (string?)models["data"]![0]!["id"]);

        // The raw prompt, with the tokenizer's BOS: the same as greedy generation on it.
        var (model, tokenizer) = Reference.Value;
        string expected;
        lock (Reference)
        {
            using var scope = NewDisposeScope();
            var ids = Generation.Generate(model, tokenizer.Encode("Once upon a time"), new GenerationOptions
            {
                MaxNewTokens = 6, RepetitionPenalty = 1.1, EosTokenIds = [.. GenerationOptions.EosFromModelFolder(ServedModel.BaseModel), tokenizer.EosTokenId!.Value],
            });
            expected = tokenizer.Decode(ids, skipSpecialTokens: true);
        }
        using var response = await http.PostAsJsonAsync("v1/completions", new { model = served.Client.ModelId, prompt = "Once upon a time", max_tokens = 6, temperature = 0 });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = (await response.Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal("text_completion", (string?)body["object"]);
        Assert.Equal(expected, (string?)body["choices"]![0]!["text"]);
    }

    [Fact]
    public async Task Eight_parallel_requests_all_complete_in_arrival_order()
    {
        var started = new ConcurrentQueue<long>();
        void Record(AxolotlChatClient.Request r) => started.Enqueue(r.Sequence);
        served.Client.GenerationStarted += Record;
        try
        {
            string[] instructions = ["Name a colour.", "Name a fruit.", "Say hello.", "Count to three.", "Name a city.", "Describe rain.", "Name a tree.", "Give a number."];
            using var http = new HttpClient { BaseAddress = served.Server.Address, Timeout = TimeSpan.FromMinutes(2) };
            var answers = await Task.WhenAll(instructions.Select(async instruction =>
            {
                using var response = await http.PostAsJsonAsync("v1/chat/completions", new
                {
                    model = served.Client.ModelId, temperature = 0, max_tokens = 10,
                    messages = new[] { new { role = "user", content = instruction } },
                });
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                return (string?)(await response.Content.ReadFromJsonAsync<JsonObject>())!["choices"]![0]!["message"]!["content"];
            }));
            Assert.Equal(instructions.Select(i => Greedy(i, 10).Text), answers);
            var order = started.ToList();
            Assert.Equal(8, order.Count);
            Assert.Equal(order.Order(), order);
        }
        finally
        {
            served.Client.GenerationStarted -= Record;
        }
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_stream_stops_its_generation()
    {
        AxolotlChatClient.Request? running = null;
        void Record(AxolotlChatClient.Request r) => running = r;
        served.Client.GenerationStarted += Record;
        // Slow enough that the whole answer cannot be done before the disconnect reaches the server.
        served.Client.AfterEachToken = () => Thread.Sleep(20);
        try
        {
            // No draining of the rest of the answer to reuse the connection: disposing the response closes it.
            using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0, PooledConnectionLifetime = TimeSpan.Zero }) { BaseAddress = served.Server.Address };
            var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
            {
                Content = JsonContent.Create(new { model = served.Client.ModelId, stream = true, max_tokens = 150, messages = new[] { new { role = "user", content = "Tell a long story." } } }),
            };
            using (var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
            {
                Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
                using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
                int contentChunks = 0;
                while (contentChunks < 2 && await reader.ReadLineAsync() is { } line)
                    if (line.Contains("\"content\":\"") && !line.Contains("\"content\":\"\"")) contentChunks++;
                Assert.Equal(2, contentChunks);
            }
            // Bounded wait for the server to notice (checked after each token).
            for (int i = 0; i < 600 && !served.Log.Any(l => l.Contains("disconnected")); i++) await Task.Delay(50);
            Assert.True(served.Log.Any(l => l.Contains("the client disconnected")), string.Join("\n", served.Log));
            Assert.NotNull(running);
            // The generation thread sees the cancellation at its next token.
            await running!.Job!.Done.Task.ContinueWith(_ => { }).WaitAsync(TimeSpan.FromMinutes(1));
            Assert.True(running.Job.Done.Task.IsCanceled);
            Assert.True(running.Produced < 150, $"generated all {running.Produced} tokens");
        }
        finally
        {
            served.Client.AfterEachToken = null;
            served.Client.GenerationStarted -= Record;
        }
    }

    [Fact]
    public async Task The_page_carries_the_gradio_title_max_tokens_and_temperature()
    {
        using var dir = TestSetup.TempDir();
        using var client = ServedModel.LoadClient(dir);
        await using var server = await ChatServer.StartAsync(client, "127.0.0.1", 0, page: new ChatPage("Bots & <Co>", 77, 0.25));
        using var http = new HttpClient { BaseAddress = server.Address };
        var html = await http.GetStringAsync("/");
        Assert.Contains("<title>Bots &amp; &lt;Co&gt;</title>", html);
        Assert.Contains("<h1>Bots &amp; &lt;Co&gt; · ", html);
        Assert.Contains("id=\"max-tokens\" type=\"number\" min=\"1\" step=\"1\" value=\"77\"", html);
        Assert.Contains("step=\"0.1\" value=\"0.25\"", html);
    }

    [Fact]
    public async Task A_full_queue_answers_503_and_later_requests_are_served()
    {
        using var dir = TestSetup.TempDir();
        using var client = ServedModel.LoadClient(dir, maxQueuedRequests: 1);
        await using var server = await ChatServer.StartAsync(client, "127.0.0.1", 0);
        using var release = new ManualResetEventSlim();
        client.AfterEachToken = () => release.Wait(TimeSpan.FromMinutes(1));
        using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(2) };
        object Body(string content) => new { model = client.ModelId, max_tokens = 3, temperature = 0, messages = new[] { new { role = "user", content } } };
        var running = http.PostAsJsonAsync("v1/chat/completions", Body("first"));
        for (int i = 0; i < 600 && !client.Busy; i++) await Task.Delay(20);
        var waiting = http.PostAsJsonAsync("v1/chat/completions", Body("second"));
        for (int i = 0; i < 600 && client.QueuedRequests < 1; i++) await Task.Delay(20);
        using (var refused = await http.PostAsJsonAsync("v1/chat/completions", Body("third")))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            Assert.Equal("server_busy", (string?)JsonNode.Parse(await refused.Content.ReadAsStringAsync())!["error"]!["code"]);
        }
        release.Set();
        using var first = await running;
        using var second = await waiting;
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Assert.Equal(HttpStatusCode.OK, second.StatusCode);
    }

    [ChromiumFact]
    public async Task Chat_page_streams_an_answer_in_Chromium()
    {
        var chromium = ChromiumFactAttribute.Path!;
        using var playwright = await Microsoft.Playwright.Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"] });
        var page = await browser.NewPageAsync();
        var external = new List<string>();
        page.Request += (_, r) => { if (!r.Url.StartsWith(served.Server.Address.ToString())) external.Add(r.Url); };
        await page.GotoAsync(served.Server.Address.ToString());
        await page.Locator("#model").Filter(new() { HasText = served.Client.ModelId }).WaitForAsync();
        // Count the answer's text changes: a streamed answer grows piece by piece.
        await page.EvaluateAsync("""
            window.__changes = 0;
            new MutationObserver(() => window.__changes++).observe(document.getElementById('log'), { subtree: true, characterData: true, childList: true });
            """);
        await page.FillAsync("#temperature", "0");
        await page.FillAsync("#max-tokens", "12");
        await page.FillAsync("#prompt", "Name a colour.");
        // Tokens spaced out, so each arrives in its own read however loaded the machine is: the page must show them as
        // they come, not the answer at the end.
        served.Client.AfterEachToken = () => Thread.Sleep(100);
        var answer = page.Locator(".assistant[data-state=done]");
        try
        {
            await page.ClickAsync("#send");
            await answer.WaitForAsync(new() { Timeout = 60_000 });
        }
        finally { served.Client.AfterEachToken = null; }
        Assert.Equal(Greedy("Name a colour.", 12).Text, await answer.TextContentAsync());
        Assert.True(await page.EvaluateAsync<int>("window.__changes") > 3);
        Assert.Matches(@"\d+ tokens, [\d.]+ tokens/s", await page.TextContentAsync("#stats"));
        var shot = Path.Combine(AppContext.BaseDirectory, "TestResults", "chat-page.png");
        Directory.CreateDirectory(Path.GetDirectoryName(shot)!);
        await page.ScreenshotAsync(new() { Path = shot, FullPage = true });
        output.WriteLine($"screenshot: {shot}");
        Assert.Empty(external);

        await page.ClickAsync("#clear");
        Assert.Equal(0, await page.Locator(".msg").CountAsync());
    }

}

/// <summary>A fact that drives Debian's Chromium through Playwright (whose own browser download is not reachable here): skipped without it.</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public static readonly string? Path =
        new[] { Environment.GetEnvironmentVariable("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser" }.FirstOrDefault(p => p is { Length: > 0 } && File.Exists(p));

    public ChromiumFactAttribute()
    {
        if (Path is null) Skip = "needs Chromium: apt-get install -y chromium (.ci/run installs it), or set CHROMIUM_PATH.";
    }
}
