using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Training;

namespace Axolotl.Recipes;

/// <summary>
/// The README.md model card that <c>axolotl train</c> leaves in output_dir, shaped like Axolotl's: Hub metadata, what was
/// trained on what, the results per logged step, and the resolved config to reproduce the run.
/// </summary>
internal static class ModelCard
{
    public const string FileName = "README.md";

    public static void Write(string outputDir, AxolotlConfig config, TrainerState state) =>
        AtomicFile.WriteAllText(Path.Combine(outputDir, FileName), Render(config, state, Path.GetFileName(outputDir)));

    public static string Render(AxolotlConfig config, TrainerState state, string name)
    {
        var baseModel = config.BaseModelRepoId ?? config.BaseModel;
        // With pretraining_dataset, what was trained on is its (first, streamed) entry; datasets is not read.
        var datasets = (config.PretrainingDataset.Count > 0 ? config.PretrainingDataset.Take(1) : config.Datasets).Select(d => d.Path).ToList();
        var card = new StringBuilder();
        card.AppendLine("---");
        card.AppendLine($"base_model: {Quote(baseModel)}");
        if (config.Adapter != null) card.AppendLine("library_name: peft");
        card.AppendLine("tags:\n- axolotl\n- generated_from_trainer");
        if (datasets.Count > 0) card.AppendLine("datasets:").AppendJoin("", datasets.Select(d => $"- {Quote(d)}\n"));
        card.AppendLine("---").AppendLine();
        card.AppendLine($"# {name}").AppendLine();
        var method = config.Adapter switch
        {
            null => "A full fine-tune of",
            var a => $"A {(a == AdapterKind.Qlora ? "QLoRA" : "LoRA")} adapter{(config.PeftUseDora ? " (DoRA)" : "")} (r {config.LoraR}, alpha {config.LoraAlpha}) for",
        };
        card.AppendLine($"{method} `{baseModel}`, trained with Axolotl.NET on {(datasets.Count == 0 ? "no listed dataset" : string.Join(", ", datasets.Select(d => $"`{d}`")))}" +
                        (config.Rl is { } rl ? $" by preference training: {Training.Objectives.PreferenceSettings.Describe(config)}." : "."));
        var evals = state.LogHistory.Where(e => e["eval_loss"] != null).ToList();
        if (evals.Count > 0) card.AppendLine().AppendLine($"Final loss on the evaluation set: {Format(evals[^1]["eval_loss"]!)}.");
        card.AppendLine();
        card.AppendLine("<details><summary>See axolotl config</summary>").AppendLine();
        card.AppendLine("```yaml").Append(ConfigWriter.ToYaml(config)).AppendLine("```").AppendLine();
        card.AppendLine("</details><br>").AppendLine();

        card.AppendLine("## Training results").AppendLine();
        var evalAt = evals.Where(e => e["step"] != null).GroupBy(e => e["step"]!.ToJsonString()).ToDictionary(g => g.Key, g => g.Last()["eval_loss"]!);
        var steps = state.LogHistory.Where(e => (e["loss"] != null || e["eval_loss"] != null) && e["step"] != null)
            .GroupBy(e => e["step"]!.ToJsonString()).ToList();
        if (steps.Count == 0) card.AppendLine("No step was logged.");
        else
        {
            card.AppendLine(evals.Count > 0 ? "| Step | Epoch | Training Loss | Validation Loss |\n|---:|---:|---:|---:|" : "| Step | Epoch | Training Loss |\n|---:|---:|---:|");
            foreach (var group in steps)
            {
                var loss = group.Select(e => e["loss"]).LastOrDefault(l => l != null);
                var epoch = group.Select(e => e["epoch"]).LastOrDefault(l => l != null);
                card.Append($"| {group.Key} | {(epoch is null ? "" : Format(epoch))} | {(loss is null ? "No log" : Format(loss))} |");
                if (evals.Count > 0) card.Append($" {(evalAt.TryGetValue(group.Key, out var ev) ? Format(ev) : "")} |");
                card.AppendLine();
            }
        }
        if (state.LogHistory.LastOrDefault(e => e["train_loss"] != null) is { } summary)
            card.AppendLine().AppendLine($"Mean training loss {Format(summary["train_loss"]!)} over {summary["step"]} steps in {summary["train_runtime"]} s.");
        return card.ToString();
    }

    static string Format(JsonNode number) => LossCurve.Number(number).ToString("0.####", CultureInfo.InvariantCulture);

    static string Quote(string s) => System.Text.Json.JsonSerializer.Serialize(s);
}
