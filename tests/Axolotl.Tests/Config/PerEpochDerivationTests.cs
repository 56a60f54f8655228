using Axolotl.Config;

namespace Axolotl.Tests.Config;

/// <summary>Axolotl's normalize_config turns saves_per_epoch/evals_per_epoch into fractions of the run.</summary>
public class PerEpochDerivationTests
{
    const string Base = "base_model: m\nlearning_rate: 0.0002\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n";

    [Fact]
    public void Axolotls_llama2_lora_example_saves_every_quarter_and_evaluates_every_sixteenth_of_the_run()
    {
        // num_epochs 4, saves_per_epoch 1, evals_per_epoch 4, val_set_size 0.05.
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs/llama-2__lora.yml"), []);
        Assert.Equal(0.25, c.SaveSteps);
        Assert.Equal(1.0 / 16, c.EvalSteps);
        Assert.Contains("saves_per_epoch", c.Sources["save_steps"]);
    }

    [Fact]
    public void A_fraction_of_one_or_more_is_not_turned_into_steps_and_evals_need_a_validation_split()
    {
        var once = ConfigLoader.Parse(Base + "num_epochs: 1\nsaves_per_epoch: 1\nevals_per_epoch: 2\n", "cfg.yml");
        Assert.Null(once.SaveSteps);
        Assert.Null(once.EvalSteps); // no val_set_size: Axolotl leaves eval_steps alone
        var split = ConfigLoader.Parse(Base + "num_epochs: 2\nsaves_per_epoch: 2\nevals_per_epoch: 2\nval_set_size: 0.1\n", "cfg.yml");
        Assert.Equal(0.25, split.SaveSteps);
        Assert.Equal(0.25, split.EvalSteps);
    }

    [Fact]
    public void The_written_config_reads_back_without_contradicting_itself()
    {
        var c = ConfigLoader.Parse(Base + "num_epochs: 2\nsaves_per_epoch: 2\nevals_per_epoch: 2\nval_set_size: 0.1\n", "cfg.yml");
        var yaml = ConfigWriter.ToYaml(c);
        Assert.Contains("# save_steps: 0.25", yaml);
        var again = ConfigLoader.Parse(yaml, "axolotl_config.yml");
        Assert.Equal((0.25, 0.25), (again.SaveSteps, again.EvalSteps));
    }
}
