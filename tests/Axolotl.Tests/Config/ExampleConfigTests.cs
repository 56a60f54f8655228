using Axolotl.Config;
using YamlDotNet.RepresentationModel;

namespace Axolotl.Tests.Config;

/// <summary>
/// Axolotl's own example configs (testdata/axolotl-configs, see SOURCES.md): each one loads, or is refused with an
/// error that names exactly the unsupported keys it sets. The expected keys are worked out here from the raw YAML,
/// apart from the loader and its lists: the file's keys that this test's own lists name, plus the values we do not
/// implement.
/// </summary>
public class ExampleConfigTests
{
    public static TheoryData<string> Files() => [.. Directory.GetFiles(TestSetup.Data("axolotl-configs"), "*.y*ml").Select(Path.GetFileName).Order()!];

    [Fact]
    public void All_fifty_configs_are_here() => Assert.Equal(50, Files().Count);

    [Theory]
    [MemberData(nameof(Files))]
    public void Loads_or_is_refused_naming_exactly_its_unsupported_keys(string file)
    {
        var path = TestSetup.Data("axolotl-configs", file);
        var expected = ExpectedRefusals(path).ToHashSet();
        if (expected.Count == 0)
        {
            ConfigLoader.Load(path);
            return;
        }
        var e = Assert.Throws<UnsupportedKeysError>(() => ConfigLoader.Load(path));
        Assert.Equal(expected.Order(), e.Keys.Order());
        foreach (var key in expected) Assert.Contains($"'{key}:", e.Message);
        Assert.Single(e.Message.Split('\n'));
    }

    [Fact]
    public void An_example_loads_once_its_unsupported_keys_are_switched_off_from_the_command_line()
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", "llama-3__fft-8b.yaml"),
            ["--no-sample-packing", "--no-special-tokens"]);
        Assert.Equal(["optimizer", "gradient_checkpointing_kwargs", "attn_implementation"],
            c.Warnings.Select(w => w.Split('\'')[1].Split(':')[0]));
        Assert.Equal((8, 8, "paged_adamw_8bit", "sdpa"), (c.GradientAccumulationSteps, c.BatchSize, c.Optimizer, c.AttnImplementation));
    }

    // The Axolotl features these configs use that Axolotl.NET does not implement, stated here rather than read from the
    // loader: preference training beyond dpo/ipo/simpo/orpo (rl values, trl), GPTQ, QAT, llmcompressor, PEFT-specific blocks, W&B
    // reporting, and the rest below. Set to anything but empty or false, each must be refused.
    static readonly HashSet<string> NotImplemented =
    [
        "gptq", "group_by_length",
        "llmcompressor",
        "push_dataset_to_hub", "qat",
        "remove_unused_columns",
        "tokenizer_legacy", "torchdistx_path", "trl",
        "use_wandb", "wandb_entity", "wandb_log_model", "wandb_name", "wandb_project", "wandb_watch",
    ];

    // Dataset entry keys not implemented (process-reward datasets' step_separator, max_completion_length and
    // train_on_last_step_only are, as are preference training's field_chosen/field_rejected with rl).
    static readonly HashSet<string> NotImplementedDatasetKeys = [];

    // GRPO's reward-function dataset types: refused with or without rl.
    static readonly HashSet<string> RewardTypes = ["rwd.gsm8k_transform"];

    // Without rl, the preference types (chat_template.argilla, chat_template.default) are not SFT types either.
    static readonly HashSet<string> NotImplementedTypes = [.. RewardTypes, "chat_template.argilla", "chat_template.default"];

    static IEnumerable<string> ExpectedRefusals(string path)
    {
        var yaml = new YamlStream();
        yaml.Load(new StringReader(File.ReadAllText(path)));
        var root = (YamlMappingNode)yaml.Documents[0].RootNode;
        string? adapter = root.Children.Where(kv => ((YamlScalarNode)kv.Key).Value == "adapter").Select(kv => (kv.Value as YamlScalarNode)?.Value).FirstOrDefault();
        string? rl = root.Children.Where(kv => ((YamlScalarNode)kv.Key).Value == "rl").Select(kv => (kv.Value as YamlScalarNode)?.Value).FirstOrDefault();
        bool Flag(string name) => root.Children.Any(kv => ((YamlScalarNode)kv.Key).Value == name && (kv.Value as YamlScalarNode)?.Value == "true");
        bool reward = Flag("reward_model"), processReward = Flag("process_reward_model");
        foreach (var (k, v) in root.Children)
        {
            var key = ((YamlScalarNode)k).Value!;
            if (!IsSet(v)) continue;
            if (NotImplemented.Contains(key)) yield return key;
            var value = (v as YamlScalarNode)?.Value;
            bool refusedValue = key switch
            {
                "rl" => value is not ("dpo" or "ipo" or "simpo" or "orpo"),
                "load_in_4bit" => value == "true" && adapter == "lora", // Axolotl quantizes to 4 bits only with qlora
                "optimizer" => value is not ("adamw_torch" or "adamw_torch_fused" or "adamw_bnb_8bit" or "adamw_8bit" or "paged_adamw_8bit" or "muon"
                    or "paged_adamw_32bit" or "adamw_torch_4bit"),
                "lr_scheduler" => value is not ("cosine" or "linear" or "constant" or "constant_with_warmup" or "cosine_with_restarts"
                    or "polynomial" or "inverse_sqrt" or "cosine_with_min_lr" or "cosine_warmup_with_min_lr" or "warmup_stable_decay" or "rex"),
                "model_type" => value is not ("AutoModelForCausalLM" or "LlamaForCausalLM" or "MistralForCausalLM")
                    && !(reward && value == "AutoModelForSequenceClassification") && !(processReward && value == "AutoModelForTokenClassification"),
                "plugins" => ((YamlSequenceNode)v).Children.Any(p => ((YamlScalarNode)p).Value is not
                    ("axolotl.integrations.liger.LigerPlugin" or "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin")),
                _ => false,
            };
            if (refusedValue) yield return key;
            if (key != "datasets") continue;
            int i = 0;
            foreach (var entry in ((YamlSequenceNode)v).Children.Cast<YamlMappingNode>())
            {
                foreach (var (dk, dv) in entry.Children)
                {
                    var name = ((YamlScalarNode)dk).Value!;
                    if (!IsSet(dv)) continue;
                    var text = (dv as YamlScalarNode)?.Value;
                    if (NotImplementedDatasetKeys.Contains(name) || (name == "type" && text != null && (rl is null ? NotImplementedTypes.Contains(text) : RewardTypes.Contains(text))))
                        yield return $"datasets[{i}].{name}";
                }
                i++;
            }
        }
    }

    static bool IsSet(YamlNode node) => node switch
    {
        YamlScalarNode s => s.Style != YamlDotNet.Core.ScalarStyle.Plain || s.Value is not (null or "" or "~" or "null" or "false" or "False"),
        YamlSequenceNode seq => seq.Children.Count > 0,
        YamlMappingNode map => map.Children.Count > 0,
        _ => true,
    };
}
