using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;
using Axolotl.Training;
using Axolotl.Training.Trackers;

namespace Axolotl.Recipes;

/// <summary>
/// The callbacks a config asks for beyond the loop's own: the eval table and causal-LM eval (eval_table_size,
/// do_causal_lm_eval), MLflow (use_mlflow / mlflow_experiment_name), OpenTelemetry metrics (use_otel_metrics). Lives
/// for the whole recipe: disposing it ends an unfinished MLflow run as KILLED and stops the metrics endpoint.
/// </summary>
internal sealed class RunTrackers : IDisposable
{
    readonly List<ITrainerCallback> _callbacks = [];

    public IReadOnlyList<ITrainerCallback> Callbacks => _callbacks;

    /// <summary>Adds the configured trackers (on the process that writes outputs only).</summary>
    public void AddFor(AxolotlConfig config, string outputDir, IReadOnlyList<Example> eval, Tokenizer? tokenizer,
                       TensorBoardWriter? tensorBoard, IRecipeReporter reporter)
    {
        bool perplexity = config.DoCausalLmEval && (config.EvalCausalLmMetrics ?? [.. Trackers.DefaultMetrics]).Contains("perplexity");
        if ((config.EvalTableSize > 0 || perplexity) && tokenizer != null && config.Rl == null && config.EvalStrategy != IntervalStrategy.No)
            _callbacks.Add(new EvalSamplesCallback(eval, tokenizer, new EvalSamplesOptions
            {
                TableSize = config.EvalTableSize, BatchSize = config.EvalBatchSize ?? config.MicroBatchSize,
                MaxNewTokens = config.EvalMaxNewTokens, Perplexity = perplexity,
            }, outputDir, tensorBoard));
        if (config.UseMlflow == true)
        {
            var modelConfig = Path.Combine(config.BaseModelConfig ?? config.BaseModel, "config.json");
            var mlflow = new MlflowCallback(MlflowRunOptions.Store(config.MlflowTrackingUri), new MlflowRunOptions
            {
                ExperimentName = config.MlflowExperimentName,
                RunName = config.MlflowRunName ?? config.OutputDir,
                ConfigYaml = ConfigWriter.ToYaml(config),
                ModelConfigJson = File.Exists(modelConfig) ? File.ReadAllText(modelConfig) : null,
                Flatten = Environment.GetEnvironmentVariable("MLFLOW_FLATTEN_PARAMS") is { } f && f.ToUpperInvariant() is "TRUE" or "1" or "YES",
                LogArtifacts = config.HfMlflowLogArtifacts,
                ConfigFile = File.Exists(config.SourcePath) ? config.SourcePath : null,
            }, reporter.Warn);
            _callbacks.Add(mlflow);
            reporter.Info($"MLflow: logging to {config.MlflowTrackingUri ?? Environment.GetEnvironmentVariable("MLFLOW_TRACKING_URI") ?? "./mlruns"}, experiment {config.MlflowExperimentName ?? "Default"}.");
        }
        if (config.UseOtelMetrics)
        {
            var otel = new OpenTelemetryCallback(config.OtelMetricsHost, config.OtelMetricsPort);
            _callbacks.Add(otel);
            reporter.Info($"OpenTelemetry metrics served at {otel.Endpoint} while the run lasts.");
        }
    }

    /// <summary>After the outputs are saved: MLflow logs them (hf_mlflow_log_artifacts) and ends the run FINISHED.</summary>
    public void Finish(string outputDir)
    {
        foreach (var mlflow in _callbacks.OfType<MlflowCallback>()) mlflow.Finish(outputDir);
    }

    public void Dispose()
    {
        foreach (var c in _callbacks.OfType<IDisposable>()) c.Dispose();
    }
}
