using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Hub;
using Axolotl.Inference;
using Axolotl.Recipes;
using Axolotl.Training;

namespace Axolotl;

/// <summary>What a <see cref="TrainingProgress"/> report is about.</summary>
public enum TrainingProgressKind
{
    /// <summary>A line the CLI would print (a Hub path resolved, the device, a file saved).</summary>
    Message,
    /// <summary>A warning the CLI would print in yellow (a mapped key, a skipped row).</summary>
    Warning,
    /// <summary>Rows tokenized so far (<see cref="TrainingProgress.RowsTokenized"/>).</summary>
    Tokenizing,
    /// <summary>Training begins: <see cref="TrainingProgress.TotalSteps"/> is known.</summary>
    Started,
    /// <summary>An optimizer step finished: step, loss, learning rate, tokens per second.</summary>
    Step,
    /// <summary>An entry of transformers' log_history (train or eval metrics): <see cref="TrainingProgress.Log"/>.</summary>
    Logged,
}

/// <summary>One progress report of a run started through <see cref="AxolotlRuns"/>.</summary>
public sealed record TrainingProgress
{
    public required TrainingProgressKind Kind { get; init; }
    /// <summary>The text of a <see cref="TrainingProgressKind.Message"/> or <see cref="TrainingProgressKind.Warning"/>.</summary>
    public string? Message { get; init; }
    /// <summary>The optimizer step just finished (Step, Logged), else 0.</summary>
    public int Step { get; init; }
    /// <summary>The steps the run will take, once training started (0 before).</summary>
    public int TotalSteps { get; init; }
    public double? Loss { get; init; }
    public double? LearningRate { get; init; }
    public double? TokensPerSecond { get; init; }
    /// <summary>Training time so far (Step reports).</summary>
    public TimeSpan Elapsed { get; init; }
    public int RowsTokenized { get; init; }
    /// <summary>A log_history entry as trainer_state.json stores it (Logged reports).</summary>
    public JsonObject? Log { get; init; }
}

/// <summary>
/// A run stopped through its <see cref="CancellationToken"/>, with the CLI's Ctrl-C semantics: the step in flight
/// finished and a checkpoint was saved (unless save_strategy is no), from which the same config resumes with
/// auto_resume_from_checkpoints: true.
/// </summary>
public sealed class RunCanceledException(string message, int step, string? checkpoint, Exception inner, CancellationToken token)
    : OperationCanceledException(message, inner, token)
{
    /// <summary>The last step that finished.</summary>
    public int Step { get; } = step;
    /// <summary>The checkpoint folder written on the way out; null when save_strategy is no.</summary>
    public string? Checkpoint { get; } = checkpoint;
}

/// <summary>
/// The library's entry point for a .NET program: what the <c>axolotl</c> commands do, as calls. A config comes from a
/// YAML file (as on the command line, with the same <c>--key value</c> overrides) or from an object whose properties
/// or keys are Axolotl's config keys; it goes through the same checks either way, and Hub ids in it are resolved (from
/// the local Hugging Face cache, else downloaded into it) before a run reads them. Runs go on a background thread;
/// progress comes through <see cref="IProgress{T}"/>, and cancelling a training run finishes the step in flight and
/// saves a checkpoint, as Ctrl-C does in the CLI.
/// </summary>
/// <example>
/// <code>
/// var config = AxolotlRuns.LoadConfig("examples/quickstart.yml");
/// var result = await AxolotlRuns.TrainAsync(config, new Progress&lt;TrainingProgress&gt;(p => Console.WriteLine(p.Loss)));
/// using var chat = await AxolotlRuns.LoadChatClientAsync(config);
/// var answer = await chat.GetResponseAsync("Name three colours.");
/// </code>
/// </example>
public static class AxolotlRuns
{
    /// <summary>The config in a YAML file; <paramref name="overrides"/> as on the command line (<c>--learning-rate 1e-4</c>).</summary>
    /// <exception cref="UserError">The file is missing or the config is invalid; the message names the file, line and key.</exception>
    public static AxolotlConfig LoadConfig(string path, params string[] overrides) => ConfigLoader.Load(path, overrides);

    /// <summary>
    /// A config from an object: a dictionary of config keys (<c>new Dictionary&lt;string, object&gt; { ["base_model"] = "..." }</c>)
    /// or an anonymous object with the keys as property names (<c>new { base_model = "...", datasets = new[] { new { path = "...", type = "alpaca" } } }</c>).
    /// Relative paths are relative to the current directory.
    /// </summary>
    public static AxolotlConfig LoadConfig(object keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        if (keys is string) throw new ArgumentException("a string is a path: call LoadConfig(path) for a YAML file.", nameof(keys));
        var yaml = new YamlDotNet.Serialization.SerializerBuilder()
            .ConfigureDefaultValuesHandling(YamlDotNet.Serialization.DefaultValuesHandling.OmitNull)
            .Build().Serialize(keys);
        return ConfigLoader.Parse(yaml, "(config object)");
    }

    /// <summary>Trains as <c>axolotl train</c> does, and returns where the result was saved and the trainer state.</summary>
    /// <exception cref="RunCanceledException"><paramref name="cancellationToken"/> stopped it after a step, with a checkpoint saved.</exception>
    /// <exception cref="UserError">A mistake in the config or data, in one sentence.</exception>
    public static Task<FinetuneResult> TrainAsync(AxolotlConfig config, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Start(config, progress, cancellationToken, reporter =>
        {
            try { return FinetuneRecipe.Run(config, reporter, cancellationToken); }
            catch (TrainingInterrupted stopped)
            {
                throw new RunCanceledException(stopped.Message, stopped.Step, stopped.Checkpoint, stopped, cancellationToken);
            }
        });

    /// <inheritdoc cref="TrainAsync(AxolotlConfig, IProgress{TrainingProgress}?, CancellationToken)"/>
    public static Task<FinetuneResult> TrainAsync(string configPath, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        TrainAsync(LoadConfig(configPath), progress, cancellationToken);

    /// <summary>
    /// Scores the model (with the adapter from lora_model_dir, else output_dir) on the training and validation splits,
    /// as <c>axolotl evaluate</c>, writing output_dir/eval_summary.csv. Cancellation is honoured before it starts.
    /// </summary>
    public static Task<EvaluateResult> EvaluateAsync(AxolotlConfig config, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Start(config, progress, cancellationToken, reporter => EvaluateRecipe.Run(config, reporter));

    /// <summary>Folds the LoRA adapter into base_model as <c>axolotl merge-lora</c>; returns the merged model's folder.</summary>
    public static Task<string> MergeLoraAsync(AxolotlConfig config, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Start(config, progress, cancellationToken, reporter => MergeRecipe.Run(config, reporter));

    /// <summary>Tokenizes the datasets as training would (and caches them in dataset_prepared_path), as <c>axolotl preprocess</c>.</summary>
    public static Task<DatasetSummary> PreprocessAsync(AxolotlConfig config, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Start(config, progress, cancellationToken, reporter =>
        {
            using var data = PreprocessRecipe.Run(config, reporter, rebuild: true).Data;
            return DatasetSummary.Of(data);
        });

    /// <summary>
    /// Loads base_model with the trained adapter (lora_model_dir, else output_dir, when adapter is set) as an
    /// <see cref="Microsoft.Extensions.AI.IChatClient"/>, as <c>axolotl inference</c> and <c>axolotl serve</c> do.
    /// </summary>
    public static Task<AxolotlChatClient> LoadChatClientAsync(AxolotlConfig config, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Start(config, progress, cancellationToken, reporter => AxolotlChatClient.Load(config, reporter));

    static Task<T> Start<T>(AxolotlConfig config, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken, Func<IRecipeReporter, T> run)
    {
        ArgumentNullException.ThrowIfNull(config);
        // A long-running thread of its own: a run holds it for minutes, which would starve the thread pool.
        return Task.Factory.StartNew(() =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            var reporter = new ProgressReporter(progress);
            foreach (var warning in config.Warnings) reporter.Warn(warning);
            using (var hub = HubClient.FromEnvironment())
                foreach (var note in PathResolver.Resolve(config, hub)) reporter.Info(note);
            return run(reporter);
        }, cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>The recipes' observer, turned into progress reports.</summary>
    sealed class ProgressReporter(IProgress<TrainingProgress>? progress) : IRecipeReporter
    {
        int _totalSteps;

        void Report(TrainingProgress report) => progress?.Report(report);
        public void Info(string message) => Report(new() { Kind = TrainingProgressKind.Message, Message = message, TotalSteps = _totalSteps });
        public void Warn(string message) => Report(new() { Kind = TrainingProgressKind.Warning, Message = message, TotalSteps = _totalSteps });
        public void OnTokenizing(int rowsDone) => Report(new() { Kind = TrainingProgressKind.Tokenizing, RowsTokenized = rowsDone });

        public void OnStart(TrainingPlan plan)
        {
            _totalSteps = plan.TotalSteps;
            Report(new() { Kind = TrainingProgressKind.Started, TotalSteps = plan.TotalSteps });
        }

        public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) => Report(new()
        {
            Kind = TrainingProgressKind.Step, Step = step, TotalSteps = _totalSteps, Loss = loss, LearningRate = learningRate,
            TokensPerSecond = tokensPerSecond, Elapsed = elapsed,
        });

        public void OnLog(JsonObject entry) => Report(new()
        {
            Kind = TrainingProgressKind.Logged, Step = (int?)entry["step"] ?? 0, TotalSteps = _totalSteps, Log = (JsonObject)entry.DeepClone(),
            Loss = (double?)(entry["loss"] ?? entry["eval_loss"]), LearningRate = (double?)entry["learning_rate"],
        });
    }
}
