using Axolotl.Config;

namespace Axolotl.Tests.Preference;

public class PreferenceConfigTests
{
    const string Head = "base_model: ./m\nlearning_rate: 1e-5\n";

    [Fact]
    public void An_axolotl_dpo_config_loads_with_its_keys()
    {
        var c = ConfigLoader.Parse(Head + """
            rl: dpo
            rl_beta: 0.2
            dpo_loss_type: ["ipo"]
            max_prompt_len: 128
            precompute_ref_log_probs: true
            datasets:
              - path: Intel/orca_dpo_pairs
                type: chatml.intel
              - path: x.jsonl
                type:
                  field_prompt: q
                  chosen_format: "{chosen}!"
            """, "dpo.yml");
        Assert.Equal((Axolotl.Config.RlMethod.Dpo, 0.2, 128, true), (c.Rl, c.RlBeta, c.MaxPromptLen, c.PrecomputeRefLogProbs));
        Assert.Equal(["ipo"], c.DpoLossType!);
        Assert.Equal("q", c.Datasets[1].UserDefined!.FieldPrompt);
        Assert.Equal("{chosen}!", c.Datasets[1].UserDefined!.ChosenFormat);
    }

    [Fact]
    public void Rl_methods_not_built_and_mismatched_types_are_refused_by_name()
    {
        var grpo = Assert.Throws<UnsupportedKeysError>(() => ConfigLoader.Parse(Head + "rl: grpo\ndatasets:\n  - path: x.jsonl\n", "c.yml"));
        Assert.Contains("rl: grpo", grpo.Message);
        var sft = Assert.Throws<UserError>(() => ConfigLoader.Parse(Head + "rl: dpo\ndatasets:\n  - path: x.jsonl\n    type: alpaca\n", "c.yml"));
        Assert.Contains("'alpaca'", sft.Message);
        var noRl = Assert.Throws<UserError>(() => ConfigLoader.Parse(Head + "datasets:\n  - path: x.jsonl\n    type: chatml.intel\n", "c.yml"));
        Assert.Contains("chatml.intel", noRl.Message);
        var orpo = Assert.Throws<UserError>(() => ConfigLoader.Parse(Head + "rl: orpo\ndatasets:\n  - path: x.jsonl\n    type: chatml.intel\n", "c.yml"));
        Assert.Contains("chat_template.argilla", orpo.Message);
    }
}
