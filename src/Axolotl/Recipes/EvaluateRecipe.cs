using System.Globalization;
using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Runtime;
using Axolotl.Training;
using Axolotl.Training.Objectives;
using static TorchSharp.torch;

namespace Axolotl.Recipes;

public sealed record EvaluateResult(string SummaryPath, JsonObject? Training, JsonObject? Validation);

/// <summary>
/// <c>axolotl evaluate</c>: the model the config describes (base_model, plus the LoRA adapter from lora_model_dir, or
/// from output_dir when that holds one) scored on the training split and the validation split as train prepares
/// them, written to output_dir/eval_summary.csv as Axolotl writes it (metric, training, validation).
/// </summary>
internal static class EvaluateRecipe
{
    public const string SummaryFile = "eval_summary.csv";

    public static EvaluateResult Run(AxolotlConfig config, IRecipeReporter reporter)
    {
        TorchRuntime.EnsureLoaded();
        manual_seed(config.Seed);
        var device = ModelLoading.ResolveDevice(config);
        var architecture = ModelLoading.Architecture(config);
        var (data, tokenizer, _) = PreprocessRecipe.Run(config, reporter);
        tokenizer ??= ModelLoading.LoadTokenizerIfPresent(config);

        using var scope = NewDisposeScope();
        var model = ModelLoading.LoadTrained(config, architecture, tokenizer, "evaluate", reporter, device);

        var options = new TrainingOptions
        {
            MicroBatchSize = config.MicroBatchSize,
            EvalBatchSize = config.EvalBatchSize,
            // As during training: eval_sample_packing (default sample_packing) packs the evaluated rows too.
            EvalPacking = config.EvalSamplePacking == true ? PackingOptions.For(config) : null,
            PadTokenId = tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0,
            Seed = config.Seed,
        };
        IBatchSource Batches(IReadOnlyList<Example> rows, string split) =>
            config.RewardModel ? new RewardPairBatches(rows, config.EvalBatchSize ?? config.MicroBatchSize, options.PadTokenId, options.PadToMultipleOf, config.Seed, sequential: true)
            : config.Rl is null ? new EvaluationBatches(rows, options, split) : PreferenceTraining.EvaluationBatches(config, rows, options.PadTokenId);
        var trainBatches = data.Examples.Count > 0 ? Batches(data.Examples, "train") : null;
        var evalBatches = data.Eval.Count > 0 ? Batches(data.Eval, "eval") : null;
        // rl: the method's loss and TRL's metrics against its reference (the adapter disabled, or the loaded weights
        // themselves for a full fine-tune), as the trainer evaluates during training. Reward models score pairs with
        // TRL's Bradley-Terry loss, process reward models their labelled steps.
        var objective = RewardTraining.Applies(config) ? RewardTraining.Objective(config, model, options.PadTokenId)
            : config.Rl is null ? new CrossEntropyObjective(model)
            : PreferenceTraining.Objective(config, model, config.HasLora, new[] { trainBatches, evalBatches }.OfType<IBatchSource>(), reporter.Info);
        var training = trainBatches != null ? Score(trainBatches, "train") : null;
        var validation = evalBatches != null ? Score(evalBatches, "eval") : null;

        JsonObject Score(IBatchSource batches, string prefix)
        {
            reporter.Info($"Evaluating the {(prefix == "train" ? "training" : "validation")} split ({batches.Examples} examples)...");
            var metrics = Evaluation.Run(objective, model, batches, prefix);
            // transformers' evaluate reports loss and speed; perplexity is this project's addition and stays in the trainer's logs.
            metrics.Remove($"{prefix}_perplexity");
            foreach (var (key, value) in metrics) reporter.Info($"{key}: {value}");
            return metrics;
        }

        Directory.CreateDirectory(config.OutputDir);
        var path = Path.Combine(config.OutputDir, SummaryFile);
        AtomicFile.WriteAllText(path, Csv(training, validation));
        reporter.Info($"Evaluation results saved to {path}");
        return new EvaluateResult(path, training, validation);
    }

    /// <summary>One row per metric name without its train_/eval_ prefix, sorted; a split that was not evaluated leaves its cell empty.</summary>
    static string Csv(JsonObject? training, JsonObject? validation)
    {
        static Dictionary<string, double> Strip(JsonObject? metrics, string prefix) =>
            metrics?.ToDictionary(kv => kv.Key.StartsWith(prefix) ? kv.Key[prefix.Length..] : kv.Key, kv => kv.Value!.GetValue<double>()) ?? [];
        var train = Strip(training, "train_");
        var eval = Strip(validation, "eval_");
        static string Cell(Dictionary<string, double> values, string name) =>
            values.TryGetValue(name, out var v) ? v.ToString("R", CultureInfo.InvariantCulture) : "";
        var lines = new List<string> { "metric,training,validation" };
        lines.AddRange(train.Keys.Union(eval.Keys).Order(StringComparer.Ordinal).Select(name => $"{name},{Cell(train, name)},{Cell(eval, name)}"));
        return string.Join("\r\n", lines) + "\r\n";
    }
}
