using System.Text.Json.Nodes;

namespace Axolotl.Tests.EndToEnd;

/// <summary>What a run leaves in output_dir besides weights: metrics.jsonl, the loss curve, the model card.</summary>
[Collection(GlobalTorchRng.Name)]
public class RunOutputsTests
{
    static string Config(TempDir dir, string extra = "") => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        datasets:
          - path: {TestSetup.WriteReferenceRows(dir, i => 30 + 8 * i)}
        sequence_len: 64
        adapter: lora
        lora_r: 4
        lora_alpha: 8
        lora_target_modules: [q_proj, v_proj]
        val_set_size: 2
        eval_steps: 3
        micro_batch_size: 1
        num_epochs: 3
        learning_rate: 0.001
        logging_steps: 1
        bf16: false
        save_steps: 2
        output_dir: {dir["out"]}
        {extra}
        """;

    static List<JsonNode> History(TempDir dir) =>
        JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray().Select(e => e!).ToList();

    static List<JsonNode> MetricsLines(TempDir dir) =>
        File.ReadAllLines(dir["out/metrics.jsonl"]).Select(l => JsonNode.Parse(l)!).ToList();

    static void AssertSameEntries(List<JsonNode> expected, List<JsonNode> actual)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
            Assert.True(JsonNode.DeepEquals(expected[i], actual[i]), $"line {i + 1}: {actual[i].ToJsonString()} != {expected[i].ToJsonString()}");
    }

    [Fact]
    public void A_run_leaves_metrics_jsonl_a_loss_curve_and_a_model_card_and_a_resume_does_not_duplicate_metrics()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], Config(dir));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));
        var history = History(dir);
        Assert.Contains(history, e => e["eval_loss"] != null);
        Assert.Contains(history, e => e["train_loss"] != null);
        AssertSameEntries(history, MetricsLines(dir));

        var html = File.ReadAllText(dir["out/loss_curve.html"]);
        Assert.DoesNotContain("<script", html);
        var polyline = System.Text.RegularExpressions.Regex.Match(html, "<polyline[^>]* points=\"([^\"]*)\"");
        Assert.True(polyline.Success);
        Assert.Equal(history.Count(e => e["loss"] != null), polyline.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.Equal(history.Count(e => e["eval_loss"] != null), System.Text.RegularExpressions.Regex.Matches(html, "<circle ").Count);

        var card = File.ReadAllText(dir["out/README.md"]);
        Assert.Contains("```yaml\n" + File.ReadAllText(dir["out/axolotl_config.yml"]) + "```", card.Replace("\r\n", "\n"));
        Assert.Contains("base_model: \"" + TestSetup.Data("reference", "models", "tiny-llama") + "\"", card);
        // One results row per logged training step.
        Assert.Equal(history.Count(e => e["loss"] != null), card.Split('\n').Count(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\| \d+ \|")));

        // Resumed into the same output_dir: the file restarts from the checkpoint's history, then continues.
        File.WriteAllText(dir["r.yml"], Config(dir, $"resume_from_checkpoint: {dir["out/checkpoint-2"]}"));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["r.yml"]]));
        var resumed = History(dir);
        Assert.Equal(history.Count(e => e["loss"] != null), resumed.Count(e => e["loss"] != null));
        AssertSameEntries(resumed, MetricsLines(dir));
    }
}
