using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Templates;
using Axolotl.Tokenization;
using Microsoft.Extensions.AI;

namespace Axolotl.Inference;

/// <summary>
/// A fine-tuned model as an <see cref="IChatClient"/> (Microsoft.Extensions.AI): base_model plus the trained adapter
/// (or a merged or fully fine-tuned model), prompts rendered as the model was trained, answers generated with a KV cache
/// and streamed piece by piece. One generation runs at a time, in arrival order, on a thread of its own; callers
/// beyond it wait in a queue.
/// </summary>
/// <remarks>
/// Prompt format: with a chat template in the config (<c>chat_template</c>, or a first dataset of type chat_template)
/// the whole conversation goes through it with the generation prompt, as apply_chat_template renders it; otherwise
/// the last user message is formatted in the first dataset's style (alpaca: the instruction prompt up to
/// <c>### Response:</c>), as <c>axolotl inference</c> does, since that is what the model learned to answer.
/// Options: <see cref="ChatOptions.Temperature"/> (0 decodes greedily), <see cref="ChatOptions.TopP"/>,
/// <see cref="ChatOptions.TopK"/>, <see cref="ChatOptions.MaxOutputTokens"/>, <see cref="ChatOptions.StopSequences"/>,
/// <see cref="ChatOptions.Seed"/>; unset ones take Axolotl's inference defaults (temperature 0.9, top_p 0.95,
/// top_k 40, repetition penalty 1.1), and without a seed each request draws its own.
/// </remarks>
public sealed class AxolotlChatClient : IChatClient
{
    readonly CausalLM _model;
    readonly Tokenizer _tokenizer;
    readonly IChatTemplate? _template;
    readonly AxolotlConfig _config;
    readonly GenerationOptions _defaults;
    readonly BlockingCollection<Job> _queue;
    readonly Thread _worker;
    int _disposed;
    long _arrivals;

    /// <summary>Seen by tests: a request leaves the queue and its generation starts.</summary>
    internal event Action<Request>? GenerationStarted;
    /// <summary>For tests: runs after each token (a pause makes a generation long enough to interrupt).</summary>
    internal Action? AfterEachToken { get; set; }

    /// <summary>The name the model answers to (output_dir's folder for an adapter, else base_model's).</summary>
    public string ModelId { get; }

    /// <summary>Prompt plus answer tokens the model takes (max_position_embeddings of its config.json).</summary>
    public int ContextLength => _model.Config.MaxPositionEmbeddings;

    /// <summary>Requests waiting for the generation in progress.</summary>
    public int QueuedRequests => _queue.Count;

    /// <summary>Whether a generation is running now.</summary>
    public bool Busy => Volatile.Read(ref _busy) != 0;
    int _busy;

    AxolotlChatClient(AxolotlConfig config, CausalLM model, Tokenizer tokenizer, IChatTemplate? template, int maxQueuedRequests)
    {
        _config = config;
        _model = model;
        _tokenizer = tokenizer;
        _template = template;
        _defaults = InferenceRecipe.AxolotlGeneration(config) with { EosTokenIds = InferenceRecipe.EosTokenIds(config, tokenizer) };
        ModelId = config.Adapter is null && config.BaseModelRepoId is { } repoId ? repoId
            : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(config.Adapter != null ? config.LoraModelDir ?? config.OutputDir : config.BaseModel)));
        _queue = new BlockingCollection<Job>(new ConcurrentQueue<Job>(), maxQueuedRequests);
        _worker = new Thread(Work) { IsBackground = true, Name = "axolotl generation" };
        _worker.Start();
    }

    /// <summary>
    /// Loads the model as <c>axolotl inference</c> does (Hub ids must already be resolved; <see cref="AxolotlRuns.LoadChatClientAsync"/>
    /// resolves them). <paramref name="maxQueuedRequests"/> bounds the requests that may wait.
    /// </summary>
    internal static AxolotlChatClient Load(AxolotlConfig config, IRecipeReporter? reporter = null, int maxQueuedRequests = 64)
    {
        reporter ??= new SilentReporter();
        var (model, tokenizer) = InferenceRecipe.Load(config, reporter);
        bool chat = config.ChatTemplate is { Length: > 0 } || config.Datasets.FirstOrDefault()?.Strategy == "chat_template";
        var template = chat ? DatasetBuilder.ResolveChatTemplate(config, config.Datasets.FirstOrDefault(), tokenizer, reporter.Warn) : null;
        return new AxolotlChatClient(config, model, tokenizer, template, maxQueuedRequests);
    }

    sealed class SilentReporter : IRecipeReporter;

    /// <inheritdoc/>
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in GetStreamingResponseAsync(messages, options, cancellationToken)) updates.Add(update);
        return updates.ToChatResponse();
    }

    /// <inheritdoc/>
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = PrepareChat(messages, options);
        await Task.Run(() => Enqueue(request, cancellationToken, wait: true), cancellationToken).ConfigureAwait(false);
        await foreach (var update in Stream(request, cancellationToken).ConfigureAwait(false)) yield return update;
    }

    /// <summary>A request checked and tokenized, ready to queue: errors in it surface before anything is sent.</summary>
    internal sealed class Request
    {
        public required IReadOnlyList<int> PromptIds { get; init; }
        public required GenerationOptions Options { get; init; }
        public required IReadOnlyList<string> Stops { get; init; }
        public string Id { get; } = "chatcmpl-" + Guid.NewGuid().ToString("N")[..24];
        public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;
        internal Job? Job { get; set; }
        /// <summary>Arrival order: set when queued.</summary>
        internal long Sequence { get; set; }
        /// <summary>Tokens generated so far.</summary>
        internal int Produced;
    }

    /// <summary>How a generation ended.</summary>
    internal sealed record Outcome(ChatFinishReason FinishReason, int PromptTokens, int CompletionTokens);

    internal sealed class Job(Request request, CancellationToken cancellationToken)
    {
        public Request Request { get; } = request;
        public CancellationToken CancellationToken { get; } = cancellationToken;
        public Channel<string> Pieces { get; } = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        public TaskCompletionSource<Outcome> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>Renders and tokenizes the conversation and maps the options; ArgumentException names a bad option or message.</summary>
    internal Request PrepareChat(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var list = messages?.ToList() ?? throw new ArgumentNullException(nameof(messages));
        // A chat template writes its own BOS, so none is added (as apply_chat_template tokenizes).
        return Prepared(_tokenizer.Encode(RenderPrompt(list, options?.Instructions), addSpecialTokens: _template is null), options);
    }

    /// <summary>A raw text completion (OpenAI's /v1/completions): the prompt as given, with the tokenizer's special tokens.</summary>
    internal Request PrepareCompletion(string prompt, ChatOptions? options)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (prompt.Length == 0) throw new ArgumentException("the prompt is empty.", "prompt");
        return Prepared(_tokenizer.Encode(prompt, addSpecialTokens: true), options);
    }

    Request Prepared(IReadOnlyList<int> ids, ChatOptions? options) =>
        new() { PromptIds = ids, Options = Map(options, ids.Count), Stops = options?.StopSequences?.Where(s => s.Length > 0).ToList() ?? [] };

    string RenderPrompt(List<ChatMessage> messages, string? instructions)
    {
        if (!messages.Any(m => m.Role == ChatRole.User)) throw new ArgumentException("the conversation needs at least one user message.", nameof(messages));
        if (_template is null) return InferenceRecipe.FormatPrompt(_config, messages.Last(m => m.Role == ChatRole.User).Text);
        var turns = new JsonArray();
        if (!string.IsNullOrEmpty(instructions)) turns.Add(new JsonObject { ["role"] = "system", ["content"] = instructions });
        foreach (var m in messages) turns.Add(new JsonObject { ["role"] = m.Role.Value, ["content"] = m.Text });
        return _template.Render(turns, addGenerationPrompt: true);
    }

    GenerationOptions Map(ChatOptions? o, int promptTokens)
    {
        var g = _defaults with { Seed = (ulong)Random.Shared.NextInt64() };
        int room = ContextLength - promptTokens;
        if (room <= 0)
            throw new ArgumentException($"the prompt is {promptTokens} tokens, and this model's context is {ContextLength} tokens: shorten the conversation.", "messages");
        if (o is null) return g with { MaxNewTokens = Math.Min(g.MaxNewTokens, room) };
        if (o.Temperature is float t)
        {
            if (t < 0 || t > 2 || float.IsNaN(t)) throw new ArgumentException($"temperature must be between 0 and 2, not {t}.", "temperature");
            g = t == 0 ? g with { DoSample = false } : g with { DoSample = true, Temperature = t };
        }
        if (o.TopP is float p)
        {
            if (!(p > 0 && p <= 1)) throw new ArgumentException($"top_p must be above 0 and at most 1, not {p}.", "top_p");
            g = g with { TopP = p };
        }
        if (o.TopK is int k)
        {
            if (k < 0) throw new ArgumentException($"top_k must be 0 (off) or positive, not {k}.", "top_k");
            g = g with { TopK = k };
        }
        if (o.Seed is long seed) g = g with { Seed = unchecked((ulong)seed) };
        if (o.MaxOutputTokens is int max)
        {
            if (max < 1) throw new ArgumentException($"max_tokens must be at least 1, not {max}.", "max_tokens");
            if (max > room)
                throw new ArgumentException($"this model's context is {ContextLength} tokens; the prompt takes {promptTokens}, so max_tokens can be at most {room}, not {max}.", "max_tokens");
            g = g with { MaxNewTokens = max };
        }
        else g = g with { MaxNewTokens = Math.Min(g.MaxNewTokens, room) };
        return g;
    }

    /// <summary>Queues a prepared request; false (wait: false) when the queue is full.</summary>
    internal bool Enqueue(Request request, CancellationToken cancellationToken, bool wait)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var job = new Job(request, cancellationToken);
        request.Job = job;
        while (true)
        {
            // Numbered under the lock that orders the queue, so the numbers are the queue's order.
            lock (_queue)
            {
                request.Sequence = _arrivals + 1;
                if (_queue.TryAdd(job)) { _arrivals++; return true; }
            }
            if (!wait) return false;
            // A library caller waits for room (the server answers 503 instead).
            Task.Delay(10, cancellationToken).Wait(cancellationToken);
        }
    }

    /// <summary>The updates of a queued request: text pieces as generated, then one with the finish reason and usage.</summary>
    internal async IAsyncEnumerable<ChatResponseUpdate> Stream(Request request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var job = request.Job ?? throw new InvalidOperationException("the request was not queued.");
        await foreach (var piece in job.Pieces.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            yield return Update(request, [new TextContent(piece)]);
        var outcome = await job.Done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        var last = Update(request, [new UsageContent(new UsageDetails
        {
            InputTokenCount = outcome.PromptTokens, OutputTokenCount = outcome.CompletionTokens, TotalTokenCount = outcome.PromptTokens + outcome.CompletionTokens,
        })]);
        last.FinishReason = outcome.FinishReason;
        yield return last;
    }

    ChatResponseUpdate Update(Request request, IList<AIContent> contents) => new(ChatRole.Assistant, contents)
    {
        ResponseId = request.Id, MessageId = request.Id, CreatedAt = request.Created, ModelId = ModelId,
    };

    void Work()
    {
        foreach (var job in _queue.GetConsumingEnumerable())
        {
            if (job.CancellationToken.IsCancellationRequested || Volatile.Read(ref _disposed) != 0)
            {
                job.Done.TrySetCanceled(job.CancellationToken);
                job.Pieces.Writer.TryComplete(new OperationCanceledException(job.CancellationToken));
                continue;
            }
            Volatile.Write(ref _busy, 1);
            try
            {
                GenerationStarted?.Invoke(job.Request);
                var outcome = Generate(job);
                job.Pieces.Writer.TryComplete();
                job.Done.TrySetResult(outcome);
            }
            catch (OperationCanceledException e)
            {
                job.Pieces.Writer.TryComplete(e);
                job.Done.TrySetCanceled(job.CancellationToken);
            }
            catch (Exception e)
            {
                job.Pieces.Writer.TryComplete(e);
                job.Done.TrySetException(e);
            }
            finally { Volatile.Write(ref _busy, 0); }
        }
    }

    /// <summary>Thrown from the token callback to end generation at a stop sequence (Generate has no other exit).</summary>
    sealed class StopSequenceReached : Exception;

    Outcome Generate(Job job)
    {
        var request = job.Request;
        var decoder = new StreamingDecoder(_tokenizer);
        var text = new System.Text.StringBuilder();
        int sent = 0, produced = 0;
        bool stopped = false;
        // Text that might be the start of a stop sequence is held back until it is known not to be one.
        void Send(bool final)
        {
            int upTo = final ? text.Length : text.Length - HeldBack(text, request.Stops);
            if (upTo > sent) job.Pieces.Writer.TryWrite(text.ToString(sent, upTo - sent));
            sent = Math.Max(sent, upTo);
        }
        void OnToken(int id)
        {
            AfterEachToken?.Invoke();
            job.CancellationToken.ThrowIfCancellationRequested();
            produced++;
            request.Produced = produced;
            text.Append(decoder.Push(id));
            if (FirstStop(text, request.Stops, Math.Max(0, sent - request.Stops.Select(s => s.Length).DefaultIfEmpty(0).Max())) is int at)
            {
                text.Length = at;
                throw new StopSequenceReached();
            }
            Send(final: false);
        }
        List<int>? generated = null;
        try { generated = Generation.Generate(_model, request.PromptIds, request.Options, OnToken); }
        catch (StopSequenceReached) { stopped = true; }
        if (!stopped) text.Append(decoder.Flush());
        Send(final: true);
        bool eos = generated is { Count: > 0 } && request.Options.EosTokenIds.Contains(generated[^1]);
        var reason = stopped || eos || produced < request.Options.MaxNewTokens ? ChatFinishReason.Stop : ChatFinishReason.Length;
        return new Outcome(reason, request.PromptIds.Count, produced);
    }

    static int? FirstStop(System.Text.StringBuilder text, IReadOnlyList<string> stops, int from)
    {
        if (stops.Count == 0) return null;
        var s = text.ToString();
        int? first = null;
        foreach (var stop in stops)
            if (s.IndexOf(stop, from, StringComparison.Ordinal) is var i and >= 0 && (first is null || i < first)) first = i;
        return first;
    }

    /// <summary>The length of the longest end of <paramref name="text"/> that begins some stop sequence.</summary>
    static int HeldBack(System.Text.StringBuilder text, IReadOnlyList<string> stops)
    {
        int held = 0;
        foreach (var stop in stops)
            for (int n = Math.Min(stop.Length - 1, text.Length); n > held; n--)
                if (text.ToString(text.Length - n, n) == stop[..n]) { held = n; break; }
        return held;
    }

    /// <inheritdoc/>
    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("axolotl.net", null, ModelId)
        : serviceType.IsInstanceOfType(this) ? this
        : null;

    /// <summary>Finishes the generation in progress, drops the queue's waiting requests (cancelled) and frees the model.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _queue.CompleteAdding();
        _worker.Join();
        _queue.Dispose();
        _model.Dispose();
    }
}
