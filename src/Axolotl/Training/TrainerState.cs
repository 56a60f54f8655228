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

    public JsonObject ToJson() => new()
    {
        ["best_metric"] = null,
        ["best_model_checkpoint"] = null,
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
        };
        if (json["log_history"] is JsonArray history)
            state.LogHistory.AddRange(history.OfType<JsonObject>().Select(e => (JsonObject)e.DeepClone()));
        return state;
    }

    public void Save(string dir) =>
        AtomicFile.WriteAllText(Path.Combine(dir, FileName), ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
}
