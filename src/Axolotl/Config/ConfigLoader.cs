using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Text;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Axolotl.Config;

/// <summary>
/// Reads an Axolotl YAML file into <see cref="AxolotlConfig"/>. Policy, key by key: a key we implement is applied;
/// a key Axolotl knows but we do not implement yet is refused by name unless left empty; any other key is an error
/// that suggests the closest known key. Nothing is silently ignored.
/// </summary>
public static class ConfigLoader
{
    static readonly Dictionary<string, PropertyInfo> TopLevel = Properties(typeof(AxolotlConfig));
    static readonly Dictionary<string, PropertyInfo> DatasetKeys = Properties(typeof(DatasetConfig));

    /// <summary>Axolotl keys that are valid there but have no implementation here yet (left empty they are fine).</summary>
    static readonly HashSet<string> KnownUnsupported = new(StringComparer.Ordinal)
    {
        "revision_of_model", "tokenizer_use_fast", "tokenizer_legacy", "trust_remote_code", "overrides_of_model_config",
        "load_in_8bit", "load_in_4bit", "gptq", "bnb_config_kwargs", "fp16", "tf32", "device_map", "max_memory",
        "low_cpu_mem_usage", "resize_token_embeddings_to_32x", "unfrozen_parameters", "attn_implementation",
        "flash_attention", "sdp_attention", "xformers_attention", "flex_attention", "lora_modules_to_save",
        "lora_fan_in_fan_out", "lora_rank_pattern", "lora_alpha_pattern", "peft_layers_to_transform", "peft_use_dora",
        "peft_use_rslora", "peft_init_lora_weights", "loraplus_lr_ratio", "loraplus_lr_embedding", "lora_on_cpu",
        "merge_method", "test_datasets", "dataset_prepared_path", "dataset_num_proc", "dataset_exact_deduplication",
        "eval_sequence_len", "excess_length_strategy", "min_sample_len", "pretraining_dataset", "streaming",
        "eval_sample_packing", "pad_to_sequence_len", "sample_packing_group_size", "sample_packing_bin_size",
        "sample_packing_sequentially", "multipack_real_batches", "curriculum_sampling", "batch_size", "eval_batch_size",
        "lr_scheduler_kwargs", "cosine_min_lr_ratio", "neftune_noise_alpha", "group_by_length", "gradient_checkpointing",
        "gradient_checkpointing_kwargs", "special_tokens", "tokens", "added_tokens_overrides", "chat_template",
        "chat_template_jinja", "eot_tokens", "default_system_message", "save_only_model", "save_first_step", "hub_model_id", "eval_table_size", "eval_max_new_tokens", "do_causal_lm_eval", "metric_for_best_model",
        "load_best_model_at_end", "early_stopping_patience", "use_wandb", "wandb_project", "wandb_entity",
        "wandb_watch", "wandb_name", "wandb_run_id", "wandb_log_model", "use_mlflow", "mlflow_tracking_uri",
        "mlflow_experiment_name", "use_tensorboard", "loss_watchdog_threshold", "loss_watchdog_patience", "include_tkps",
        "deepspeed", "fsdp", "fsdp_config", "fsdp_version",
        "context_parallel_size", "tensor_parallel_size", "rl", "rl_beta", "dpo_loss_type", "orpo_alpha", "trl",
        "relora_steps", "relora_warmup_steps", "relora_cpu_offload", "local_rank", "debug", "early_stopping",
        "hf_use_auth_token", "torch_compile", "gpu_memory_limit", "plugins", "liger_rope", "liger_rms_norm",
        "liger_glu_activation", "liger_layer_norm", "liger_fused_linear_cross_entropy", "chat_template_kwargs",
        "dataset_processes", "warmup_steps_ratio", "evals_per_step", "save_total", "logging_dir",
    };

    static readonly HashSet<string> KnownUnsupportedDatasetKeys = new(StringComparer.Ordinal)
    {
        "name", "data_files", "revision", "shards", "shards_idx", "field_messages", "message_property_mappings",
        "message_field_role", "message_field_content", "message_field_training", "message_field_training_detail",
        "field_tools", "roles", "roles_to_train", "train_on_eos", "train_on_eot", "drop_system_message", "chat_template",
        "chat_template_jinja", "conversation", "field_system", "field_instruction", "field_input", "field_output",
        "format", "no_input_format", "system_format", "system_prompt", "preprocess_shards", "trust_remote_code",
    };

    public static AxolotlConfig Load(string path, IReadOnlyList<string>? overrides = null)
    {
        if (!File.Exists(path)) throw new UserError($"{path}: config file not found.");
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new UserError($"{path}: cannot be read ({e.Message})."); }
        return Parse(text, path, overrides);
    }

    public static AxolotlConfig Parse(string yaml, string path, IReadOnlyList<string>? overrides = null)
    {
        var yamlStream = new YamlStream();
        try { yamlStream.Load(new StringReader(yaml)); }
        catch (YamlException e)
        {
            var reason = (e.InnerException?.Message ?? e.Message).Split('\n')[0];
            throw new UserError($"{path}:{e.Start.Line}:{e.Start.Column}: YAML syntax error: {reason}");
        }
        if (yamlStream.Documents.Count == 0 || yamlStream.Documents[0].RootNode is not YamlMappingNode root)
            throw new UserError($"{path}: the config must be a YAML mapping of keys to values.");

        var config = new AxolotlConfig { SourcePath = path };
        foreach (var (keyNode, valueNode) in root.Children)
        {
            var key = ((YamlScalarNode)keyNode).Value ?? "";
            Apply(config, TopLevel, KnownUnsupported, key, valueNode, path);
        }
        foreach (var (key, value) in ParseOverrides(overrides ?? []))
        {
            if (key.StartsWith("datasets", StringComparison.Ordinal))
                throw new UserError($"--{key.Replace('_', '-')}: nested dataset keys cannot be overridden from the command line; edit the YAML file.");
            Apply(config, TopLevel, KnownUnsupported, key, value, "command line");
        }
        Validate(config, path);
        return config;
    }

    /// <summary>Axolotl's CLI form: --learning-rate 1e-4, --lora_model_dir=DIR, --load-in-4bit, --no-load-in-4bit.</summary>
    static IEnumerable<(string Key, YamlNode Value)> ParseOverrides(IReadOnlyList<string> args)
    {
        for (int i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (!arg.StartsWith("--")) throw new UserError($"unexpected argument '{arg}': overrides look like --key value or --key=value.");
            var body = arg[2..];
            string? value = null;
            int eq = body.IndexOf('=');
            if (eq >= 0) { value = body[(eq + 1)..]; body = body[..eq]; }
            var key = body.Replace('-', '_');
            if (value == null)
            {
                if (i + 1 < args.Count && !args[i + 1].StartsWith("--")) value = args[++i];
                else if (key.StartsWith("no_")) { key = key[3..]; value = "false"; }
                else value = "true";
            }
            yield return (key, new YamlScalarNode(value));
        }
    }

    static void Apply(object target, Dictionary<string, PropertyInfo> schema, HashSet<string> unsupported, string key, YamlNode value, string path)
    {
        string where = Where(path, value);
        if (schema.TryGetValue(key, out var property))
        {
            if (IsNull(value)) return; // an empty key means "use the default", as in Axolotl
            property.SetValue(target, Convert(value, property.PropertyType, key, path));
            return;
        }
        if (unsupported.Contains(key))
        {
            if (IsNull(value) || value is YamlScalarNode { Value: "false" }) return;
            throw new UserError($"{where}: '{key}' is an Axolotl option that Axolotl.NET does not implement yet; remove it or leave it empty.");
        }
        var suggestion = Closest(key, schema.Keys.Concat(unsupported));
        throw new UserError($"{where}: unknown key '{key}'" + (suggestion != null ? $"; did you mean '{suggestion}'?" : "."));
    }

    static object? Convert(YamlNode node, Type type, string key, string path)
    {
        var underlying = Nullable.GetUnderlyingType(type) ?? type;
        string where = Where(path, node);
        if (underlying == typeof(List<DatasetConfig>))
        {
            if (node is not YamlSequenceNode seq) throw new UserError($"{where}: '{key}' must be a list of datasets.");
            var list = new List<DatasetConfig>();
            foreach (var item in seq.Children)
            {
                if (item is not YamlMappingNode map) throw new UserError($"{Where(path, item)}: each entry of '{key}' must be a mapping with at least 'path'.");
                var dataset = new DatasetConfig { Origin = Where(path, item) };
                foreach (var (k, v) in map.Children)
                    Apply(dataset, DatasetKeys, KnownUnsupportedDatasetKeys, ((YamlScalarNode)k).Value ?? "", v, path);
                if (string.IsNullOrWhiteSpace(dataset.Path)) throw new UserError($"{dataset.Origin}: dataset entry has no 'path'.");
                list.Add(dataset);
            }
            return list;
        }
        if (underlying == typeof(List<string>))
        {
            if (node is YamlScalarNode single) return new List<string> { single.Value ?? "" };
            if (node is not YamlSequenceNode seq) throw new UserError($"{where}: '{key}' must be a list of strings.");
            return seq.Children.Select(c => c is YamlScalarNode s ? s.Value ?? "" : throw new UserError($"{Where(path, c)}: '{key}' entries must be strings.")).ToList();
        }
        if (node is not YamlScalarNode scalar) throw new UserError($"{where}: '{key}' must be a single value, not a list or mapping.");
        var text = (scalar.Value ?? "").Trim();
        if (underlying == typeof(string)) return text;
        if (underlying == typeof(bool))
            return text.ToLowerInvariant() switch
            {
                "true" or "yes" or "on" => true,
                "false" or "no" or "off" => false,
                _ => throw new UserError($"{where}: '{key}' must be true or false, not '{text}'."),
            };
        if (underlying == typeof(int))
        {
            if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var i)) return i;
            if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
            throw new UserError($"{where}: '{key}' must be a whole number, not '{text}'.");
        }
        if (underlying == typeof(double))
        {
            if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d)) return d;
            throw new UserError($"{where}: '{key}' must be a number, not '{text}'.");
        }
        throw new InvalidOperationException($"config property of type {type} has no converter");
    }

    static void Validate(AxolotlConfig c, string path)
    {
        void Fail(string message) => throw new UserError($"{path}: {message}");
        if (string.IsNullOrWhiteSpace(c.BaseModel)) Fail("'base_model' is required (a Hugging Face model folder).");
        if (c.LearningRate is null) Fail("'learning_rate' is required.");
        if (c.LearningRate <= 0) Fail("'learning_rate' must be positive.");
        if (c.Datasets.Count == 0) Fail("'datasets' is required: at least one entry with a 'path'.");
        if (c.SequenceLen < 2) Fail("'sequence_len' must be at least 2.");
        if (c.MicroBatchSize < 1) Fail("'micro_batch_size' must be at least 1.");
        if (c.GradientAccumulationSteps < 1) Fail("'gradient_accumulation_steps' must be at least 1.");
        if (c.NumEpochs <= 0 && c.MaxSteps is null) Fail("'num_epochs' must be positive (or set 'max_steps').");
        if (c.MaxSteps is <= 0) Fail("'max_steps' must be positive.");
        var bf16 = c.Bf16.ToLowerInvariant();
        if (bf16 is not ("auto" or "true" or "false")) Fail($"'bf16' must be auto, true or false, not '{c.Bf16}'.");
        c.Bf16 = bf16;
        if (c.Adapter is "qlora") Fail("adapter 'qlora' needs load_in_4bit, which Axolotl.NET does not implement yet; use adapter: lora.");
        if (c.Adapter is not (null or "" or "lora")) Fail($"'adapter' must be lora (or unset for a full fine-tune), not '{c.Adapter}'.");
        if (c.Adapter == "") c.Adapter = null;
        if (c.Adapter == "lora" && c.LoraModelDir is null)
        {
            if (c.LoraR is null or <= 0) Fail("adapter lora needs 'lora_r' (a positive rank).");
            if (c.LoraAlpha is null) Fail("adapter lora needs 'lora_alpha'.");
            if ((c.LoraTargetModules is null || c.LoraTargetModules.Count == 0) && !c.LoraTargetLinear)
                Fail("adapter lora needs 'lora_target_modules' or 'lora_target_linear: true'.");
        }
        if (c.Adapter is null && c.LoraModelDir is not null) Fail("'lora_model_dir' is set but 'adapter' is not; add 'adapter: lora'.");
        if (c.LoraDropout is < 0 or >= 1) Fail("'lora_dropout' must be in [0, 1).");
        if (c.Optimizer is not ("adamw_torch" or "adamw_torch_fused"))
            Fail($"optimizer '{c.Optimizer}' is not implemented yet (adamw_torch and adamw_torch_fused are).");
        if (c.LrScheduler is not ("cosine" or "linear" or "constant" or "constant_with_warmup"))
            Fail($"lr_scheduler '{c.LrScheduler}' is not implemented yet (cosine, linear, constant, constant_with_warmup are).");
        if (c.WarmupSteps is not null && c.WarmupRatio is not null) Fail("set either 'warmup_steps' or 'warmup_ratio', not both.");
        if (c.WarmupRatio is < 0 or > 1) Fail("'warmup_ratio' must be in [0, 1].");
        if (c.ValSetSize < 0) Fail("'val_set_size' must be 0 (no validation), a fraction below 1, or a row count.");
        if (c.EvalStrategy is not (null or "steps" or "epoch" or "no")) Fail($"eval_strategy '{c.EvalStrategy}' is not supported (steps, epoch, no are).");
        if (c.EvalSteps is not null && c.EvalsPerEpoch is not null) Fail("set either 'eval_steps' or 'evals_per_epoch', not both.");
        if (c.EvalSteps is <= 0) Fail("'eval_steps' must be positive.");
        if (c.EvalsPerEpoch is <= 0) Fail("'evals_per_epoch' must be positive.");
        if (c.SamplePacking) Fail("'sample_packing: true' is not implemented yet; set it to false.");
        if (c.SaveStrategy is not ("steps" or "epoch" or "no")) Fail($"save_strategy '{c.SaveStrategy}' is not supported (steps, epoch, no are).");
        if (c.SaveSteps is not null && c.SavesPerEpoch is not null) Fail("set either 'save_steps' or 'saves_per_epoch', not both.");
        if (c.SaveSteps is <= 0) Fail("'save_steps' must be positive.");
        if (c.SavesPerEpoch is <= 0) Fail("'saves_per_epoch' must be positive.");
        if (c.SaveTotalLimit is <= 0) Fail("'save_total_limit' must be positive.");
        if (c.ResumeFromCheckpoint != null && !Directory.Exists(c.ResumeFromCheckpoint))
            Fail($"resume_from_checkpoint: folder '{c.ResumeFromCheckpoint}' does not exist.");
        if (!c.SaveSafetensors) Fail("'save_safetensors: false' is not supported: weights are always saved as safetensors.");
        foreach (var d in c.Datasets)
        {
            if (d.Type is not (null or "" or "alpaca" or "completion"))
                throw new UserError($"{d.Origin}: dataset type '{d.Type}' is not implemented yet (alpaca, completion, and pre-tokenized rows with no type are).");
            if (d.Type == "") d.Type = null;
        }
    }

    static bool IsNull(YamlNode node) =>
        node is YamlScalarNode s && s.Style == YamlDotNet.Core.ScalarStyle.Plain && (s.Value is null or "" or "~" or "null" or "Null" or "NULL");

    static string Where(string path, YamlNode node) =>
        node.Start.Line > 0 ? $"{path}:{node.Start.Line}:{node.Start.Column}" : path;

    static Dictionary<string, PropertyInfo> Properties(Type type) =>
        type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite && p.SetMethod!.IsPublic && p.Name != nameof(AxolotlConfig.SourcePath))
            .ToDictionary(p => SnakeCase(p.Name), p => p, StringComparer.Ordinal);

    public static string SnakeCase(string pascal)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < pascal.Length; i++)
        {
            char ch = pascal[i];
            if (char.IsUpper(ch) && i > 0 && !char.IsDigit(pascal[i - 1])) sb.Append('_');
            sb.Append(char.ToLowerInvariant(ch));
        }
        return sb.ToString();
    }

    /// <summary>The known key nearest by edit distance, when it is near enough to be a typo.</summary>
    static string? Closest(string key, IEnumerable<string> known)
    {
        var best = known.Select(k => (k, d: Levenshtein(key, k))).OrderBy(x => x.d).FirstOrDefault();
        return best.k != null && best.d <= Math.Max(2, key.Length / 3) ? best.k : null;
    }

    static int Levenshtein(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) previous[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Length; j++)
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }
}
