using Axolotl.Config;

namespace Axolotl.Tests.Config;

/// <summary>reward_model / process_reward_model: Axolotl's defaults, and the combinations that cannot train, refused by key.</summary>
public class RewardConfigTests
{
    static AxolotlConfig Parse(string top, string type = "bradley_terry.chat_template") => ConfigLoader.Parse($"""
        base_model: some/model
        datasets:
          - path: pairs.jsonl
            type: {type}
        learning_rate: 0.001
        {top}
        """, "reward.yml");

    [Fact]
    public void A_reward_model_defaults_to_one_label_a_sequence_classifier_and_padding_to_sequence_len()
    {
        var c = Parse("reward_model: true");
        Assert.Equal((1, "AutoModelForSequenceClassification", true), (c.NumLabels, c.ModelType, c.PadToSequenceLen));
        Assert.False(Parse("reward_model: true\npad_to_sequence_len: false").PadToSequenceLen);
    }

    [Fact]
    public void A_reward_model_gets_one_label_whatever_num_labels_says_as_in_axolotl()
    {
        var c = Parse("reward_model: true\nnum_labels: 3");
        Assert.Equal(1, c.NumLabels);
        Assert.Contains(c.Warnings, w => w.Contains("num_labels 3 is set to 1"));
    }

    [Fact]
    public void A_process_reward_model_defaults_to_two_labels_and_a_token_classifier()
    {
        var c = Parse("process_reward_model: true", "stepwise_supervised");
        Assert.Equal((2, "AutoModelForTokenClassification"), (c.NumLabels, c.ModelType));
        Assert.Null(c.PadToSequenceLen);
    }

    [Fact]
    public void A_quoted_step_separator_keeps_its_whitespace_as_pyyaml_reads_it()
    {
        var c = ConfigLoader.Parse("""
            base_model: some/model
            process_reward_model: true
            datasets:
              - path: steps.jsonl
                type: stepwise_supervised
                step_separator: "\n"
              - path: steps.jsonl
                type: stepwise_supervised
                step_separator: ' ки '
            learning_rate: 0.001
            """, "prm.yml");
        Assert.Equal("\n", c.Datasets[0].StepSeparator);
        Assert.Equal(" ки ", c.Datasets[1].StepSeparator);
        // …and the resolved config written with a run reads back the same.
        var again = ConfigLoader.Parse(ConfigWriter.ToYaml(c), "again.yml");
        Assert.Equal(["\n", " ки "], again.Datasets.Select(d => d.StepSeparator));
    }

    [Theory]
    [InlineData("", "bradley_terry.chat_template", "needs reward_model: true")]
    [InlineData("", "stepwise_supervised", "needs process_reward_model: true")]
    [InlineData("reward_model: true", "alpaca", "the dataset type must be bradley_terry.chat_template")]
    [InlineData("process_reward_model: true", "bradley_terry.chat_template", "the dataset type must be stepwise_supervised")]
    [InlineData("reward_model: true\nprocess_reward_model: true", "bradley_terry.chat_template", "reward.yml:7:1: reward_model and process_reward_model are both true")]
    [InlineData("reward_model: true\nmodel_type: AutoModelForTokenClassification", "bradley_terry.chat_template", "model_type must be AutoModelForSequenceClassification")]
    [InlineData("process_reward_model: true\nnum_labels: 1", "stepwise_supervised", "reward.yml:7:1: process_reward_model needs num_labels of at least 2")]
    [InlineData("reward_model: true\nsample_packing: true", "bradley_terry.chat_template", "sample_packing: true does not work with reward_model")]
    [InlineData("reward_model: true\nrl: dpo", "bradley_terry.chat_template", "rl: dpo and reward_model: true are different trainers")]
    public void Combinations_that_cannot_train_are_refused_in_one_sentence(string top, string type, string message)
    {
        var e = Assert.ThrowsAny<UserError>(() => Parse(top, type));
        Assert.Contains(message, e.Message);
        Assert.Single(e.Message.Split('\n'));
    }

    [Fact]
    public void A_classifier_model_type_without_a_reward_model_is_refused_by_name()
    {
        var e = Assert.Throws<UnsupportedKeysError>(() => Parse("model_type: AutoModelForSequenceClassification\nnum_labels: 1", "alpaca"));
        Assert.Equal(["model_type", "num_labels"], e.Keys.Order());
    }
}
