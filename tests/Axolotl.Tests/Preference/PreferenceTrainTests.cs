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
    }
}
