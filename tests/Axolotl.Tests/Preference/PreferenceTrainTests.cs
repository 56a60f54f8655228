using Axolotl.Config;
using Axolotl.Recipes;

namespace Axolotl.Tests.Preference;

/// <summary><c>axolotl train</c> on an rl config: a short DPO run of the shipped example, metrics named as TRL's.</summary>
[Collection(GlobalTorchRng.Name)]
public class PreferenceTrainTests
{
    sealed class Quiet : IRecipeReporter;

    static string RepoRoot()
    {
        var dir = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(dir, "Axolotl.sln"))) dir = Path.GetDirectoryName(dir)!;
        return dir;
    }

    [Fact]
    public void Dpo_example_trains_and_logs_trl_metrics_with_eval()
    {
        using var dir = TestSetup.TempDir();
        var root = RepoRoot();
        var yaml = File.ReadAllText(Path.Combine(root, "examples", "dpo.yml"))
            .Replace("examples/", Path.Combine(root, "examples") + "/").Replace("outputs/dpo", dir["out"]);
        var config = ConfigLoader.Parse(yaml, "dpo.yml", ["--max-steps", "2", "--micro-batch-size", "2", "--sequence-len", "160",
            "--val-set-size", "2", "--eval-steps", "2", "--logging-steps", "1", "--bf16", "false"]);
        var result = FinetuneRecipe.Run(config, new Quiet());
        var logs = result.State.LogHistory;
        var first = logs.First(e => e["rewards/margins"] != null);
        foreach (var key in new[] { "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "grad_norm" })
            Assert.True(first[key] != null, $"{key} not logged");
        // A fresh adapter is the reference: the first step's DPO loss is ln 2.
        Assert.Equal(Math.Log(2), (double)first["loss"]!, 3);
        Assert.Contains(logs, e => e["eval_rewards/margins"] != null && e["eval_loss"] != null);
        Assert.True(File.Exists(Path.Combine(dir["out"], "adapter_model.safetensors")));
        Assert.Contains("DPO (sigmoid loss), beta 0.1", File.ReadAllText(Path.Combine(dir["out"], "README.md")));

        // axolotl evaluate on the same config scores the saved adapter as DPO (not as SFT cross-entropy): the
        // validation figures equal those the trainer logged at its last step, when it evaluated the same weights.
        var evaluated = EvaluateRecipe.Run(config, new Quiet());
        var last = logs.Last(e => e["eval_loss"] != null);
        foreach (var key in new[] { "eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_logps/chosen" })
            Assert.Equal((double)last[key]!, (double)evaluated.Validation![key]!, 5);
        Assert.NotEqual(Math.Log(2), (double)evaluated.Validation!["eval_loss"]!, 4);
    }

    /// <summary>
    /// What the SFT path has keeps working under rl: QLoRA, gradient checkpointing and accumulation, and a resume from a
    /// checkpoint continues exactly (the same losses and rewards as the run that never stopped).
    /// </summary>
    [Fact]
    public void Dpo_with_qlora_checkpointing_and_accumulation_resumes_exactly()
    {
        using var dir = TestSetup.TempDir();
        var root = RepoRoot();
        var yaml = File.ReadAllText(Path.Combine(root, "examples", "dpo.yml")).Replace("examples/", Path.Combine(root, "examples") + "/");
        var trainLoss = new List<double>();
        List<(int Step, double Loss, double Margin)> Run(string output, string? resumeFrom)
        {
            string[] overrides = ["--max-steps", "4", "--save-steps", "2", "--logging-steps", "1", "--warmup-ratio", "0",
                "--micro-batch-size", "2", "--gradient-accumulation-steps", "2", "--sequence-len", "160", "--bf16", "false",
                "--adapter", "qlora", "--load-in-4bit", "true", "--gradient-checkpointing", "true", "--output-dir", output];
            var config = ConfigLoader.Parse(yaml, "dpo.yml", resumeFrom is null ? overrides : [.. overrides, "--resume-from-checkpoint", resumeFrom]);
            var history = FinetuneRecipe.Run(config, new Quiet()).State.LogHistory;
            trainLoss.Add((double)history[^1]["train_loss"]!);
            return [.. history.Where(e => e["loss"] != null).Select(e => ((int)e["step"]!, (double)e["loss"]!, (double)e["rewards/margins"]!))];
        }
        var whole = Run(dir["whole"], null);
        var resumed = Run(dir["resumed"], Path.Combine(dir["whole"], "checkpoint-2"));
        Assert.Equal(4, whole.Count);
        Assert.Equal(Math.Log(2), whole[0].Loss, 6);
        Assert.NotEqual(whole[0].Loss, whole[3].Loss);
        // The resumed run carries the checkpoint's history and then trains steps 3 and 4 to the same numbers.
        Assert.Equal(whole, resumed);
        // …and it did resume: its summary's train_loss averages only the two steps it trained.
        Assert.Equal((whole[2].Loss + whole[3].Loss) / 2, trainLoss[1], 12);
    }
}
