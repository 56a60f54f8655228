using Axolotl.Config;

namespace Axolotl.Tests.Config;

public class ConfigLoaderTests
{
    const string Minimal = """
        base_model: some/model
        datasets:
          - path: data.jsonl
            type: alpaca
        learning_rate: 0.0002
        """;

    const string Lora = Minimal + """

        adapter: lora
        lora_r: 8
        lora_alpha: 16
        lora_target_linear: true
        micro_batch_size: 2
        """;

    static AxolotlConfig Parse(string yaml, params string[] overrides) => ConfigLoader.Parse(yaml, "cfg.yml", overrides);

    static string Error(string yaml, params string[] overrides) => Assert.ThrowsAny<UserError>(() => Parse(yaml, overrides)).Message;

    [Fact]
    public void Axolotl_defaults_apply_when_keys_are_absent()
    {
        var c = Parse(Minimal);
        Assert.Equal(512, c.SequenceLen);
        Assert.Equal(1, c.MicroBatchSize);
        Assert.Equal(1, c.GradientAccumulationSteps);
        Assert.Equal(42, c.Seed);
        Assert.Equal("cosine", c.LrScheduler);
        Assert.Equal(Bf16Mode.Auto, c.Bf16);
        Assert.Equal("./model-out", c.OutputDir);
        Assert.False(c.TrainOnInputs);
        Assert.True(c.ShuffleMergedDatasets);
        Assert.Equal("alpaca", c.Datasets[0].Type);
    }

    [Fact]
    public void A_typo_names_the_key_its_position_and_the_closest_known_key()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal + "\nlora_alhpa: 16\n"));
        Assert.Contains("cfg.yml:6:1", e.Message);
        Assert.Contains("'lora_alhpa'", e.Message);
        Assert.Contains("did you mean 'lora_alpha'", e.Message);
    }

    [Fact]
    public void A_typo_inside_a_dataset_entry_is_caught_too()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal.Replace("type: alpaca", "typ: alpaca")));
        Assert.Contains("'typ'", e.Message);
        Assert.Contains("did you mean 'type'", e.Message);
    }

    [Fact]
    public void Yaml_syntax_errors_report_line_and_column()
    {
        var e = Assert.Throws<UserError>(() => Parse("base_model: x\ndatasets: [\n  - path: a\nlearning_rate: 1"));
        Assert.Matches(@"cfg\.yml:\d+:\d+: YAML syntax error", e.Message);
    }

    [Fact]
    public void Wrong_value_types_name_the_key_and_the_value()
    {
        var e = Assert.Throws<UserError>(() => Parse(Minimal + "\nmicro_batch_size: two\n"));
        Assert.Contains("'micro_batch_size' must be a whole number, not 'two'", e.Message);
        Assert.Contains("cfg.yml:6:19", e.Message);
    }

    [Fact]
    public void Known_axolotl_keys_we_do_not_implement_are_refused_by_name_unless_empty()
    {
        var e = Assert.Throws<UnsupportedKeysError>(() => Parse(Minimal + "\npose_num_chunks: 4\n"));
        Assert.Equal("cfg.yml:6:1: 'pose_num_chunks: 4' is an Axolotl option that Axolotl.NET does not implement yet; remove it or leave it empty.", e.Message);
        Assert.Equal(["pose_num_chunks"], e.Keys);
        var ok = Parse(Minimal + "\npose_num_chunks:\nload_in_8bit: false\nspecial_tokens: {}\n");
        Assert.Equal("some/model", ok.BaseModel);
        Assert.Empty(ok.Warnings);
    }

    [Fact]
    public void Every_unsupported_key_is_listed_in_one_error_with_its_position()
    {
        var e = Assert.Throws<UnsupportedKeysError>(() => Parse((Lora + """

            lora_fan_in_fan_out: true
            peft_layer_replication: true
            pose_num_chunks: 4
            optimizer: dion
            """).Replace("  - path: data.jsonl", "  - path: data.jsonl\n    field_human: chosen\n    field_model: rejected")));
        Assert.Equal(["datasets[0].field_human", "datasets[0].field_model", "lora_fan_in_fan_out", "peft_layer_replication", "pose_num_chunks", "optimizer"], e.Keys);
        Assert.StartsWith("cfg.yml: Axolotl options that Axolotl.NET does not implement yet: 'datasets[0].field_human: chosen' (4:5), " +
                          "'datasets[0].field_model: rejected' (5:5), 'lora_fan_in_fan_out: true' (13:1)", e.Message);
        Assert.EndsWith("'optimizer: dion' (16:1); remove them or leave them empty.", e.Message);
        Assert.Single(e.Message.Split('\n'));
    }

    [Theory]
    [InlineData("alpaca:fancy", "datasets[0].type: alpaca:fancy")]
    [InlineData("dpo.chatml.intel", "datasets[0].type: dpo.chatml.intel")]
    [InlineData("completion:raw", "datasets[0].type: completion:raw")]
    public void Dataset_types_split_into_strategy_and_prompt_style_and_unimplemented_ones_are_refused_by_name(string type, string shown)
    {
        var c = Parse(Minimal.Replace("type: alpaca", "type: alpaca:instruct"));
        Assert.Equal(("alpaca", "alpaca", "instruct"), (c.Datasets[0].Type, c.Datasets[0].Strategy, c.Datasets[0].Variant));
        var e = Assert.Throws<UnsupportedKeysError>(() => Parse(Minimal.Replace("type: alpaca", $"type: {type}")));
        Assert.Equal(["datasets[0].type"], e.Keys);
        Assert.Contains($"'{shown}'", e.Message);
    }

    [Fact]
    public void Missing_required_keys_are_stated_in_axolotl_terms()
    {
        Assert.Contains("'learning_rate' is required", Assert.Throws<UserError>(() => Parse(Minimal.Replace("learning_rate: 0.0002", ""))).Message);
        Assert.Contains("'base_model' is required", Assert.Throws<UserError>(() => Parse(Minimal.Replace("base_model: some/model", ""))).Message);
        Assert.Contains("lora_r", Assert.Throws<UserError>(() => Parse(Minimal + "\nadapter: lora\nlora_alpha: 16\nlora_target_linear: true\n")).Message);
    }

    [Fact]
    public void Command_line_overrides_take_axolotl_forms()
    {
        var c = Parse(Minimal, "--learning-rate", "1e-4", "--micro_batch_size=2", "--train-on-inputs", "--no-shuffle-merged-datasets");
        Assert.Equal(1e-4, c.LearningRate);
        Assert.Equal(2, c.MicroBatchSize);
        Assert.True(c.TrainOnInputs);
        Assert.False(c.ShuffleMergedDatasets);
        Assert.Contains("cannot be overridden", Assert.Throws<UserError>(() => Parse(Minimal, "--datasets", "x")).Message);
        Assert.Contains("did you mean 'learning_rate'", Assert.Throws<UserError>(() => Parse(Minimal, "--learnin-rate", "1")).Message);
    }

    [Fact]
    public void Several_unknown_keys_are_reported_together_and_typos_inside_refused_sections_are_caught()
    {
        var message = Error(Minimal + "\nlora_alhpa: 16\nlernig_rate: 1\n");
        Assert.Equal("cfg.yml: unknown keys 'lora_alhpa' at 6:1 (did you mean 'lora_alpha'?), 'lernig_rate' at 7:1 (did you mean 'learning_rate'?).", message);
        message = Error(Minimal + "\ntest_datasets:\n  - path: eval.jsonl\n    tpye: alpaca\n");
        Assert.Contains("cfg.yml:8:5: unknown key 'tpye'; did you mean 'type'?", message);
    }

    [Fact]
    public void Speed_only_keys_load_with_one_warning_each_saying_what_runs_instead()
    {
        var c = Parse(Lora + """

            flash_attention: true
            activation_offloading: true
            optimizer: paged_adamw_32bit
            liger_rms_norm: true
            plugins:
              - axolotl.integrations.liger.LigerPlugin
            tf32: false
            """);
        Assert.Equal(5, c.Warnings.Count);
        Assert.Equal("cfg.yml:11:1: 'flash_attention: true' is Axolotl's legacy flag for attn_implementation: flash_attention_2; PyTorch SDPA attention runs instead (same math).", c.Warnings[0]);
        Assert.StartsWith("cfg.yml:12:1: 'activation_offloading: true' only saves GPU memory", c.Warnings[1]);
        Assert.StartsWith("cfg.yml:13:1: 'optimizer: paged_adamw_32bit' is AdamW with compressed, paged or fused GPU state; adamw_torch runs instead", c.Warnings[2]);
        Assert.StartsWith("cfg.yml:14:1: 'liger_rms_norm: true' only swaps in a faster GPU kernel", c.Warnings[3]);
        Assert.StartsWith("cfg.yml:15:1: plugin 'axolotl.integrations.liger.LigerPlugin' only swaps in faster GPU kernels", c.Warnings[4]);
        Assert.All(c.Warnings, w => Assert.Single(w.Split('\n')));
        Assert.Equal(("sdpa", "adamw_torch"), (c.AttnImplementation, c.Optimizer));
        Assert.Equal("flash_attention → flash_attention_2 → sdpa", c.Sources["attn_implementation"]);
        Assert.Equal("flash_attention_2 → sdpa", Parse(Minimal + "\nattn_implementation: flash_attention_2\n").Sources["attn_implementation"]);
        Assert.Equal("paged_adamw_32bit → adamw_torch", c.Sources["optimizer"]);

        var refused = Assert.Throws<UnsupportedKeysError>(() => Parse(Minimal + "\nplugins:\n  - axolotl.integrations.liger.LigerPlugin\n  - axolotl.integrations.spectrum.SpectrumPlugin\n"));
        Assert.Contains("'plugins: axolotl.integrations.spectrum.SpectrumPlugin'", refused.Message);
    }

    [Fact]
    public void Attention_settings_resolve_as_in_axolotl()
    {
        Assert.Empty(Parse(Minimal + "\nattn_implementation: sdpa\n").Warnings);
        Assert.Contains("'attn_implementation: flash_attention_2' is a GPU attention kernel; PyTorch SDPA attention runs instead", Parse(Minimal + "\nattn_implementation: flash_attention_2\n").Warnings.Single());
        Assert.Contains("'sdp_attention: true' is Axolotl's legacy flag for attn_implementation: sdpa", Parse(Minimal + "\nsdp_attention: true\n").Warnings.Single());
        Assert.Equal("what runs", Parse(Minimal).Sources["attn_implementation"]);
        Assert.Equal("cfg.yml:6:1: attn_implementation cannot be combined with the legacy attention flags (flash_attention); set only attn_implementation.",
            Error(Minimal + "\nattn_implementation: sdpa\nflash_attention: true\n"));
        Assert.Contains("attn_implementation 'flash' is not accepted; use the canonical name 'flash_attention_2'", Error(Minimal + "\nattn_implementation: flash\n"));
        Assert.Contains("attn_implementation 'fast' is not a recognized backend", Error(Minimal + "\nattn_implementation: fast\n"));
    }

    [Fact]
    public void Batch_size_and_other_values_are_derived_as_axolotl_derives_them()
    {
        var c = Parse(Minimal + "\nmicro_batch_size: 2\ngradient_accumulation_steps: 4\n");
        Assert.Equal((8, 2), (c.BatchSize, c.EvalBatchSize));
        Assert.Equal("micro_batch_size × gradient_accumulation_steps", c.Sources["batch_size"]);
        c = Parse(Minimal + "\nmicro_batch_size: 4\nbatch_size: 32\n");
        Assert.Equal((32, 8), (c.BatchSize, c.GradientAccumulationSteps));
        Assert.Equal("batch_size ÷ micro_batch_size", c.Sources["gradient_accumulation_steps"]);
        Assert.Empty(c.Warnings);
        c = Parse(Minimal + "\nmicro_batch_size: 3\nbatch_size: 16\n");
        Assert.Equal(5, c.GradientAccumulationSteps);
        Assert.Equal("cfg.yml:7:1: batch_size 16 is not a multiple of micro_batch_size 3; gradient_accumulation_steps is 5, rounded down as in Axolotl.", c.Warnings.Single());
        Assert.Contains("set only one of gradient_accumulation_steps or batch_size", Error(Minimal + "\nbatch_size: 8\ngradient_accumulation_steps: 2\n"));

        Assert.Equal((false, "some/model", "some/model"), (c.EvalSamplePacking, c.BaseModelConfig, c.TokenizerConfig));
        Assert.Equal("follows sample_packing", c.Sources["eval_sample_packing"]);
        Assert.Equal("other/tok", Parse(Minimal + "\nbase_model_config: other/tok\n").TokenizerConfig);
        Assert.Equal(1.0, c.MaxGradNorm);

        c = Parse(Minimal + "\nbfloat16: true\nrandom_init_weights: true\n");
        Assert.Equal((Bf16Mode.True, true, true), (c.Bf16, c.PureBf16, c.RandomInitWeights));
        Assert.Contains("'random_init_weights' is Axolotl's older name for 'reinit_weights'", c.Warnings.Single());
        Assert.False(Parse(Minimal + "\nbf16: true\n").PureBf16);
        Assert.True(Parse(Minimal + "\nreinit_weights: true\n").RandomInitWeights);
    }

    [Theory]
    [InlineData("adapter: qlora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true", "cfg.yml:6:1: adapter: qlora requires load_in_4bit: true.")]
    [InlineData("adapter: lora\nload_in_4bit: true\nload_in_8bit: true", "cfg.yml:8:1: load_in_4bit and load_in_8bit are both set")]
    [InlineData("load_in_8bit: true", "cfg.yml:6:1: load_in_8bit and load_in_4bit need an adapter (lora or qlora)")]
    [InlineData("streaming: true", "cfg.yml:6:1: max_steps must be set when streaming")]
    [InlineData("lora_model_dir: ./adapter", "cfg.yml:6:1: 'lora_model_dir' is set but 'adapter' is not; add 'adapter: lora'.")]
    [InlineData("warmup_steps: 10\nwarmup_ratio: 0.1", "cfg.yml:7:1: warmup_steps and warmup_ratio are mutually exclusive")]
    [InlineData("val_set_size: 0.1\ntest_datasets:\n  - path: eval.jsonl", "cfg.yml:6:1: set either val_set_size or test_datasets")]
    [InlineData("adapter: lora\nflash_attn_fuse_mlp: true", "cfg.yml:7:1: flash_attn_fuse_mlp (fused modules) is not supported with LoRA/QLoRA.")]
    [InlineData("adapter: prefix", "cfg.yml:6:10: 'adapter' must be one of lora, qlora, llama-adapter, not 'prefix'")]
    public void Contradictions_are_stated_in_axolotl_terms_before_anything_is_refused(string extra, string expected)
    {
        var message = Error(Minimal + "\n" + extra + "\n");
        Assert.StartsWith(expected, message);
        Assert.IsNotType<UnsupportedKeysError>(Assert.ThrowsAny<UserError>(() => Parse(Minimal + "\n" + extra + "\n")));
    }

    [Fact]
    public void Overrides_go_through_the_same_policy()
    {
        var c = Parse(Minimal, "--flash-attention", "--optimizer", "adamw_torch_4bit");
        Assert.Equal("--flash-attention: 'flash_attention: true' is Axolotl's legacy flag for attn_implementation: flash_attention_2; PyTorch SDPA attention runs instead (same math).", c.Warnings[0]);
        Assert.Equal(("sdpa", "adamw_torch", "--optimizer"), (c.AttnImplementation, c.Optimizer, c.Warnings[1].Split(':')[0]));

        var e = Assert.Throws<UnsupportedKeysError>(() => Parse(Minimal + "\npose_num_chunks: 4\n", "--kd-trainer", "--use-wandb"));
        Assert.Equal(["pose_num_chunks", "kd_trainer", "use_wandb"], e.Keys);
        Assert.Contains("'kd_trainer: true' (--kd-trainer)", e.Message);

        // --no-... turns a refused key off, as leaving it false in the file would.
        c = Parse(Minimal + "\nload_in_8bit: true\nadapter: lora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true\nsample_packing: true\n", "--no-load-in-8bit", "--no-sample-packing");
        Assert.False(c.SamplePacking);
        Assert.Contains("did you mean 'flash_attention'", Error(Minimal, "--flash-atention"));
    }

    [Fact]
    public void Every_axolotl_key_has_exactly_one_treatment()
    {
        var typed = typeof(AxolotlConfig).GetProperties().Where(p => p.CanWrite && p.SetMethod!.IsPublic && p.Name != "SourcePath").Select(ConfigLoader.KeyOf).ToHashSet();
        foreach (var key in AxolotlKeys.All)
        {
            int places = (typed.Contains(key) ? 1 : 0) + (AxolotlKeys.Warned.ContainsKey(key) ? 1 : 0) + (ConfigLoader.Unsupported.Contains(key) ? 1 : 0)
                         + (key is "bfloat16" or "plugins" || AxolotlKeys.LegacyAttentionFlags.Any(f => f.Flag == key) ? 1 : 0);
            Assert.True(places == 1, $"{key} has {places} treatments");
        }
        // bad_rows is Axolotl.NET's own: what to do with unusable dataset rows (Axolotl always fails).
        Assert.Subset(AxolotlKeys.All, typed.Where(k => k != "bad_rows").ToHashSet());
        // The keys most configs carry, pinned so that a change of policy is a visible change here.
        Assert.Subset(ConfigLoader.Unsupported.ToHashSet(), new HashSet<string> { "lora_fan_in_fan_out", "pose_num_chunks", "wandb_project", "qat", "gptq", "hub_model_id" });
        Assert.Subset(AxolotlKeys.Warned.Keys.ToHashSet(), new HashSet<string> { "activation_offloading", "tf32", "fsdp", "liger_rms_norm", "torch_compile" });
    }
}

public class QuantizationConfigTests
{
    const string Base = "base_model: m\nlearning_rate: 0.0002\ndatasets:\n  - path: d.jsonl\n    type: alpaca\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n";

    [Fact]
    public void Qlora_with_bnb_kwargs_and_peft_variants_load_as_axolotl_writes_them()
    {
        var c = ConfigLoader.Parse(Base + "adapter: qlora\nload_in_4bit: true\nbnb_config_kwargs:\n  bnb_4bit_use_double_quant: false\n" +
                                   "peft_use_dora: true\npeft_use_rslora: true\nlora_modules_to_save: [embed_tokens, lm_head]\npeft_layers_to_transform: [0, 2]\n", "cfg.yml");
        Assert.True(c.LoadIn4Bit && c.PeftUseDora && c.PeftUseRslora);
        Assert.Equal(["embed_tokens", "lm_head"], c.LoraModulesToSave!);
        Assert.Equal([0, 2], c.PeftLayersToTransform!);
        var q = Axolotl.Quantization.QuantizationSettings.FromConfig(c)!;
        Assert.Equal((Axolotl.Quantization.QuantKind.Nf4, false), (q.Kind, q.DoubleQuant));
        // Written back and read again, the same settings.
        var again = ConfigLoader.Parse(ConfigWriter.ToYaml(c), "again.yml");
        Assert.Equal("false", again.BnbConfigKwargs!["bnb_4bit_use_double_quant"]);
        Assert.Equal([0, 2], again.PeftLayersToTransform!);
    }

    [Fact]
    public void Axolotls_qlora_defaults_are_nf4_with_double_quantization_and_fp4_is_refused()
    {
        var c = ConfigLoader.Parse(Base + "adapter: qlora\nload_in_4bit: true\n", "cfg.yml");
        var q = Axolotl.Quantization.QuantizationSettings.FromConfig(c)!;
        Assert.Equal((Axolotl.Quantization.QuantKind.Nf4, true, (TorchSharp.torch.ScalarType?)null), (q.Kind, q.DoubleQuant, q.ComputeType));
        var fp4 = ConfigLoader.Parse(Base + "adapter: qlora\nload_in_4bit: true\nbnb_config_kwargs:\n  bnb_4bit_quant_type: fp4\n", "cfg.yml");
        Assert.Contains("fp4", Assert.Throws<UserError>(() => Axolotl.Quantization.QuantizationSettings.FromConfig(fp4)).Message);
        var int8 = ConfigLoader.Parse(Base + "adapter: lora\nload_in_8bit: true\n", "cfg.yml");
        Assert.Equal(Axolotl.Quantization.QuantKind.Int8, Axolotl.Quantization.QuantizationSettings.FromConfig(int8)!.Kind);
        // With adapter: lora, Axolotl does not build its 4-bit config; refused rather than guessed.
        var e = Assert.Throws<UnsupportedKeysError>(() => ConfigLoader.Parse(Base + "adapter: lora\nload_in_4bit: true\n", "cfg.yml"));
        Assert.Equal(["load_in_4bit"], e.Keys);
    }
}

public class ConfigWriterTests
{
    [Fact]
    public void The_resolved_config_reads_back_to_the_same_resolved_config()
    {
        var yaml = """
            base_model: some/model
            datasets:
              - path: data.jsonl
                type: alpaca
              - path: more.txt
                type: completion
                field: body
            learning_rate: 0.0002
            adapter: lora
            lora_r: 8
            lora_alpha: 16
            lora_target_modules: [q_proj, v_proj]
            micro_batch_size: 2
            batch_size: 8
            val_set_size: 0.05
            evals_per_epoch: 2
            output_dir: "out dir/x"
            """;
        var resolved = ConfigLoader.Parse(yaml, "cfg.yml", ["--seed", "7"]);
        var written = ConfigWriter.ToYaml(resolved);
        var reread = ConfigLoader.Parse(written, "axolotl_config.yml");
        Assert.Equal(written.Split('\n').Skip(1), ConfigWriter.ToYaml(reread).Split('\n').Skip(1));
        Assert.Equal((7, 4, "out dir/x", 2), (reread.Seed, reread.GradientAccumulationSteps, reread.OutputDir, reread.Datasets.Count));
        Assert.Equal("body", reread.Datasets[1].Field);
    }

    [Fact]
    public void Schema_lists_implemented_keys_with_axolotl_defaults()
    {
        var schema = ConfigWriter.Schema();
        var properties = schema["properties"]!.AsObject();
        Assert.Equal("integer", (string)properties["micro_batch_size"]!["type"]!);
        Assert.Equal(1, (int)properties["micro_batch_size"]!["default"]!);
        Assert.Equal("cosine", (string)properties["lr_scheduler"]!["default"]!);
        Assert.Equal("array", (string)properties["datasets"]!["type"]!);
        Assert.True(properties["datasets"]!["items"]!["properties"]!.AsObject().ContainsKey("path"));
        // text_column and skip are refused in datasets; only pretraining_dataset entries take them.
        Assert.False(properties["datasets"]!["items"]!["properties"]!.AsObject().ContainsKey("text_column"));
        Assert.True(properties["pretraining_dataset"]!["items"]!["properties"]!.AsObject().ContainsKey("text_column"));
        Assert.False(properties.ContainsKey("lora_fan_in_fan_out"));
        Assert.Equal("object", (string)properties["bnb_config_kwargs"]!["type"]!);
        Assert.Equal("integer", (string)properties["peft_layers_to_transform"]!["items"]!["type"]!);
    }
}
