using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.IO;

namespace Axolotl.Training;

/// <summary>transformers' trainer_state.json: the run's counters and its log_history.</summary>
public sealed class TrainerState
{
    public const string FileName = "trainer_state.json";
    public int GlobalStep { get; set; }
    public double Epoch { get; set; }
    public int MaxSteps { get; set; }
    public int LoggingSteps { get; set; }
    public int NumTrainEpochs { get; set; }
    public int TrainBatchSize { get; set; }
    public List<JsonObject> LogHistory { get; } = [];
    /// <summary>The best value of metric_for_best_model seen at an evaluation, and the checkpoint saved at it.</summary>
    public double? BestMetric { get; set; }
    public string? BestModelCheckpoint { get; set; }
    /// <summary>Evaluations in a row without improvement (EarlyStoppingCallback's counter), kept across a resume.</summary>
    public int EarlyStoppingPatienceCounter { get; set; }
    public int? EarlyStoppingPatience { get; set; }

    public JsonObject ToJson() => new()
    {
        ["best_metric"] = BestMetric,
        ["best_model_checkpoint"] = BestModelCheckpoint,
        ["epoch"] = Epoch,
        ["eval_steps"] = null,
        ["global_step"] = GlobalStep,
        ["is_hyper_param_search"] = false,
        ["is_local_process_zero"] = true,
        ["is_world_process_zero"] = true,
        ["log_history"] = new JsonArray(LogHistory.Select(e => (JsonNode)e.DeepClone()).ToArray()),
        ["logging_steps"] = LoggingSteps,
        ["max_steps"] = MaxSteps,
        ["num_input_tokens_seen"] = 0,
        ["num_train_epochs"] = NumTrainEpochs,
        ["save_steps"] = null,
        ["stateful_callbacks"] = EarlyStoppingPatience is int patience ? new JsonObject
        {
            ["EarlyStoppingCallback"] = new JsonObject
            {
                ["args"] = new JsonObject { ["early_stopping_patience"] = patience, ["early_stopping_threshold"] = 0.0 },
                ["attributes"] = new JsonObject { ["early_stopping_patience_counter"] = EarlyStoppingPatienceCounter },
            },
        } : new JsonObject(),
        ["total_flos"] = 0,
        ["train_batch_size"] = TrainBatchSize,
        ["trial_name"] = null,
        ["trial_params"] = null,
    };

    public static TrainerState Load(string dir)
    {
        var json = JsonFiles.ReadObject(Path.Combine(dir, FileName));
        var state = new TrainerState
        {
            GlobalStep = json["global_step"]?.GetValue<int>() ?? 0,
            Epoch = json["epoch"]?.GetValue<double>() ?? 0,
            BestMetric = json["best_metric"]?.GetValue<double>(),
            BestModelCheckpoint = json["best_model_checkpoint"]?.GetValue<string>(),
            EarlyStoppingPatienceCounter = json["stateful_callbacks"]?["EarlyStoppingCallback"]?["attributes"]?["early_stopping_patience_counter"]?.GetValue<int>() ?? 0,
        };
        if (json["log_history"] is JsonArray history)
            state.LogHistory.AddRange(history.OfType<JsonObject>().Select(e => (JsonObject)e.DeepClone()));
        return state;
    }

    public void Save(string dir) =>
        AtomicFile.WriteAllText(Path.Combine(dir, FileName), ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
}
