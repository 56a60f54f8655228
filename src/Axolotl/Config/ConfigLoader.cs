using System.Collections.Frozen;
using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json.Nodes;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Axolotl.Config;

/// <summary>A config that sets Axolotl keys Axolotl.NET does not implement yet; the message names each with its place.</summary>
internal sealed class UnsupportedKeysError(string message, IReadOnlyList<string> keys) : UserError(message)
{
    /// <summary>The refused keys, as "load_in_8bit" or "datasets[0].type".</summary>
    public IReadOnlyList<string> Keys { get; } = keys;
}

/// <summary>
/// Reads an Axolotl YAML file into <see cref="AxolotlConfig"/>. Policy, key by key: a key we implement runs as Axolotl
/// runs it; a key that only tunes speed or memory on other hardware runs as our nearest equivalent, with a one-line
/// warning (<see cref="AxolotlConfig.Warnings"/>); a key Axolotl knows whose semantics we lack is refused by name,
/// all such keys in one error; an unknown key is an error that suggests the closest known key. Nothing is silently ignored.
/// </summary>
internal static class ConfigLoader
{
    static readonly Dictionary<string, PropertyInfo> TopLevel = Properties(typeof(AxolotlConfig));
    static readonly Dictionary<string, PropertyInfo> DatasetProperties = Properties(typeof(DatasetConfig));

    // Keys without a property whose treatment depends on their value; handled in Reader.
    static readonly string[] ByValue = ["bfloat16", "plugins", .. AxolotlKeys.LegacyAttentionFlags.Select(f => f.Flag)];

    /// <summary>Axolotl keys Axolotl.NET does not implement yet: set to anything but empty or false, each is refused.</summary>
    public static readonly FrozenSet<string> Unsupported =
        AxolotlKeys.All.Except(TopLevel.Keys).Except(AxolotlKeys.Warned.Keys).Except(ByValue).ToFrozenSet(StringComparer.Ordinal);

    /// <summary>Entry keys read only in pretraining_dataset; in datasets and test_datasets they are refused.</summary>
    internal static readonly string[] PretrainingOnlyKeys = ["text_column", "skip"];

    public static readonly FrozenSet<string> UnsupportedDatasetKeys =
        AxolotlKeys.DatasetKeys.Except(DatasetProperties.Keys).Concat(PretrainingOnlyKeys).ToFrozenSet(StringComparer.Ordinal);

    static readonly FrozenSet<string> KnownTopLevel =
        TopLevel.Keys.Concat(AxolotlKeys.All).Concat(AxolotlKeys.Warned.Keys).Concat(AxolotlKeys.Renamed.Keys).ToFrozenSet(StringComparer.Ordinal);

    static readonly FrozenSet<string> ImplementedOptimizers = Training.TrainingOptimizer.Names.ToFrozenSet();
    static readonly FrozenSet<string> ImplementedSchedulers = Training.LrSchedule.Kwargs.Keys.ToFrozenSet();

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
        var scanner = new Scanner(new StringReader(yaml));
        try { yamlStream.Load(new Parser(scanner)); }
        catch (YamlException e)
        {
            // Where the scanner found the problem: Start can be where the enclosing mapping began, lines earlier, and
            // some errors (a tab as indentation) carry no position at all, so the scanner's own position stands in.
            var at = e.End.Index > 0 ? e.End : scanner.CurrentPosition;
            var reason = (e.InnerException?.Message ?? e.Message).Split('\n')[0];
            throw new UserError($"{path}:{at.Line}:{at.Column}: YAML syntax error: {reason}");
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            // YamlDotNet fails this way on some malformed input (an unclosed [ or { running into the next key).
            var at = scanner.CurrentPosition;
            throw new UserError($"{path}:{at.Line}:{at.Column}: YAML syntax error: the text before here does not parse; look for an unclosed bracket, brace or quote.");
        }
        if (yamlStream.Documents.Count == 0 || yamlStream.Documents[0].RootNode is not YamlMappingNode root)
            throw new UserError($"{path}: the config must be a YAML mapping of keys to values.");

        // An override replaces the file's value in place, so it goes through exactly the same checks.
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        foreach (var (keyNode, valueNode) in root.Children)
            entries[KeyText(keyNode, path)] = new Entry(valueNode, Spot.In(path, keyNode), Spot.In(path, valueNode));
        int order = 0;
        foreach (var (flag, key, value) in ParseOverrides(overrides ?? []))
        {
            if (key.StartsWith("datasets", StringComparison.Ordinal) || key is "test_datasets" or "pretraining_dataset")
                throw new UserError($"{flag}: dataset keys cannot be overridden from the command line; edit the YAML file.");
            var spot = new Spot(flag, flag, int.MaxValue / 2 + order++); // after the file's lines, in command-line order
            entries[key] = new Entry(value, spot, spot);
        }
        return new Reader(path).Read(entries);
    }

    /// <summary>Axolotl's CLI form: --learning-rate 1e-4, --lora_model_dir=DIR, --load-in-4bit, --no-load-in-4bit.</summary>
    static IEnumerable<(string Flag, string Key, YamlNode Value)> ParseOverrides(IReadOnlyList<string> args)
    {
        for (int i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (!arg.StartsWith("--")) throw new UserError($"unexpected argument '{arg}': overrides look like --key value or --key=value.");
            var flag = arg.Split('=')[0];
            string? value = arg.Length > flag.Length ? arg[(flag.Length + 1)..] : null;
            var key = flag[2..].Replace('-', '_');
            if (value == null)
            {
                if (i + 1 < args.Count && !args[i + 1].StartsWith("--")) value = args[++i];
                else if (key.StartsWith("no_")) { key = key[3..]; value = "false"; }
                else value = "true";
            }
            yield return (flag, key, new YamlScalarNode(value) { Style = ScalarStyle.Plain });
        }
    }

    /// <summary>Where a value was set: "cfg.yml:12:1" in full, "12:1" inside a message that names the file once.</summary>
    sealed record Spot(string Full, string Short, int Line)
    {
        public static Spot In(string path, YamlNode node) => node.Start.Line > 0
            ? new Spot($"{path}:{node.Start.Line}:{node.Start.Column}", $"{node.Start.Line}:{node.Start.Column}", (int)node.Start.Line)
            : new Spot(path, path, int.MaxValue);
    }

    /// <summary>A key's value; At is where the key is (for messages about the key), ValueAt where its value is.</summary>
    sealed record Entry(YamlNode Node, Spot At, Spot ValueAt);

    sealed record Refusal(string Key, string Shown, Spot At);

    /// <summary>One load: collects unknown and refused keys so that one error can name them all.</summary>
    sealed class Reader(string path)
    {
        readonly AxolotlConfig c = new() { SourcePath = path };
        readonly Dictionary<string, Entry> spots = new(StringComparer.Ordinal);   // every top-level key given a value
        readonly Dictionary<string, Entry> set = new(StringComparer.Ordinal);     // keys without a property, set (not empty/false)
        readonly List<Refusal> refused = [];
        readonly List<(string Key, Spot At, string? Suggestion)> unknown = [];
        readonly List<(int Line, string Text)> warnings = [];

        void Warn(Spot at, string text) => warnings.Add((at.Line, $"{at.Full}: {text}"));

        public AxolotlConfig Read(Dictionary<string, Entry> entries)
        {
            foreach (var (key, entry) in entries) Take(key, entry);
            ThrowUnknown();
            CheckContradictions();
            RefuseByValue();
            ThrowRefused();
            Validate(c, path);
            Resolve();
            c.Warnings.AddRange(warnings.OrderBy(w => w.Line).Select(w => w.Text));
            return c;
        }

        void Take(string given, Entry e)
        {
            var key = AxolotlKeys.Renamed.GetValueOrDefault(given, given);
            if (key != given && IsSet(e.Node))
                Warn(e.At, $"'{given}' is Axolotl's older name for '{key}'; read as '{key}'.");
            if (TopLevel.TryGetValue(key, out var property))
            {
                if (IsNull(e.Node)) return; // an empty key means "use the default", as in Axolotl
                property.SetValue(c, key is "datasets" or "test_datasets" or "pretraining_dataset" ? ReadDatasets(e.Node, key) : Convert(e.Node, property.PropertyType, key, e.ValueAt.Full));
                spots[key] = e;
                c.Sources[key] = e.At.Short;
                return;
            }
            if (!KnownTopLevel.Contains(key))
            {
                unknown.Add((given, e.At, Closest(given, KnownTopLevel)));
                return;
            }
            if (key is "test_datasets" or "pretraining_dataset")
                CheckEntryKeys(e.Node, key == "test_datasets" ? AxolotlKeys.DatasetKeys : AxolotlKeys.PretrainingDatasetKeys);
            if (!IsSet(e.Node)) return;
            spots[key] = set[key] = e;
            if (Unsupported.Contains(key)) refused.Add(new Refusal(key, Shown(key, e.Node), e.At));
        }

        List<DatasetConfig> ReadDatasets(YamlNode node, string listKey)
        {
            var where = Spot.In(path, node).Full;
            bool pretraining = listKey == "pretraining_dataset";
            // Axolotl takes a single mapping for pretraining_dataset as a list of one.
            IEnumerable<YamlNode> items = node is YamlSequenceNode seq ? seq.Children
                : pretraining && node is YamlMappingNode one ? [one]
                : throw new UserError($"{where}: '{listKey}' must be a list of datasets.");
            var list = new List<DatasetConfig>();
            foreach (var item in items)
            {
                var at = Spot.In(path, item);
                if (item is not YamlMappingNode map) throw new UserError($"{at.Full}: each entry of '{listKey}' must be a mapping with at least 'path'.");
                var d = new DatasetConfig { Origin = at.Full };
                string name(string k) => $"{listKey}[{list.Count}].{k}";
                var valueSpots = new Dictionary<string, Spot>();
                foreach (var (k, v) in map.Children)
                {
                    var key = KeyText(k, path);
                    var spot = Spot.In(path, k);
                    if (key == "type" && v is YamlMappingNode format)
                        d.UserDefined = ReadUserDefined(format, name("type"));
                    else if (PretrainingOnlyKeys.Contains(key) && !pretraining)
                    {
                        if (IsSet(v)) refused.Add(new Refusal(name(key), Shown(name(key), v), spot));
                    }
                    else if (DatasetProperties.TryGetValue(key, out var property))
                    {
                        if (!IsNull(v)) property.SetValue(d, Convert(v, property.PropertyType, key, Spot.In(path, v).Full));
                        valueSpots[key] = spot;
                    }
                    else if (!AxolotlKeys.DatasetKeys.Contains(key)) unknown.Add((key, spot, Closest(key, AxolotlKeys.DatasetKeys)));
                    else if (IsSet(v)) refused.Add(new Refusal(name(key), Shown(name(key), v), spot));
                }
                // A typo such as 'pth' makes the better message, so a missing path waits for the unknown keys.
                if (string.IsNullOrWhiteSpace(d.Path) && unknown.Count == 0) throw new UserError($"{d.Origin}: dataset entry has no 'path'.");

                if (d.Type == "") d.Type = null;
                // A pretraining entry's default type: raw text, tokenized by the stream itself.
                if (pretraining && d.Type is null or "pretrain" && d.UserDefined == null) d.Type = "pretrain";
                else if (d.Type != null)
                {
                    // Axolotl's split: "alpaca:chat" is strategy alpaca in prompt style chat; instruct is alpaca's default style.
                    var parts = d.Type.Split(':', 2);
                    d.Strategy = parts[0];
                    d.Variant = parts.Length > 1 ? parts[1] : null;
                    if (d.Type == "sharegpt" || d.Strategy == "sharegpt")
                        throw new UserError($"{valueSpots["type"].Full}: type: sharegpt is deprecated in Axolotl; use type: chat_template with field_messages: conversations and message_property_mappings: {{role: from, content: value}}.");
                    // instruct is the default prompt style: "alpaca:instruct" is "alpaca".
                    if (d.Variant == "instruct" && DatasetTypes.IsImplemented(d.Strategy)) d.Type = d.Strategy;
                    // Preference types are checked against rl once every key is read.
                    if (!DatasetTypes.IsImplemented(d.Type) && !DatasetTypes.Preference.IsKnown(d.Type) && !DatasetTypes.Reward.IsKnown(d.Type))
                        refused.Add(new Refusal(name("type"), $"{name("type")}: {d.Type}", valueSpots["type"]));
                }
                if (d.DsType is not (null or "json" or "text" or "csv" or "parquet" or "arrow"))
                    throw new UserError($"{valueSpots["ds_type"].Full}: ds_type '{d.DsType}' is not one of json, csv, parquet, arrow, text.");
                if (d.FieldThinking != null)
                    Warn(valueSpots["field_thinking"], $"{name("field_thinking")} has no effect, as in Axolotl (its message_property_mappings always holds role and content, which turns off the default that reads field_thinking); map it with message_property_mappings: {{reasoning_content: {d.FieldThinking}}}.");
                if (d.Skip is < 0) throw new UserError($"{valueSpots["skip"].Full}: 'skip' must be a number of rows, 0 or more.");
                if (d.ShardsIdx is int idx && (d.Shards is not int shards || idx < 0 || idx >= shards))
                    throw new UserError($"{valueSpots["shards_idx"].Full}: shards_idx must be between 0 and shards - 1, with shards set.");
                list.Add(d);
            }
            return list;
        }

        UserDefinedFormat ReadUserDefined(YamlMappingNode map, string key)
        {
            var values = new Dictionary<string, string>();
            foreach (var (k, v) in map.Children)
            {
                var field = ((YamlScalarNode)k).Value ?? "";
                if (typeof(UserDefinedFormat).GetProperties().All(p => SnakeCase(p.Name) != field))
                    throw new UserError($"{Spot.In(path, k).Full}: '{field}' is not a key of a user-defined format (system_prompt, field_system, field_instruction, field_input, field_output, format, no_input_format, system_format).");
                values[field] = v is YamlScalarNode sv ? sv.Value ?? "" : throw new UserError($"{Spot.In(path, v).Full}: '{key}.{field}' must be a string.");
            }
            var f = new UserDefinedFormat();
            string get(string k, string fallback) => values.TryGetValue(k, out var x) ? x : fallback;
            return f with
            {
                SystemPrompt = get("system_prompt", f.SystemPrompt), FieldSystem = get("field_system", f.FieldSystem),
                FieldInstruction = get("field_instruction", f.FieldInstruction), FieldInput = get("field_input", f.FieldInput),
                FieldOutput = get("field_output", f.FieldOutput), Format = get("format", f.Format),
                NoInputFormat = get("no_input_format", f.NoInputFormat), SystemFormat = get("system_format", f.SystemFormat),
                FieldPrompt = get("field_prompt", f.FieldPrompt), FieldChosen = get("field_chosen", f.FieldChosen), FieldRejected = get("field_rejected", f.FieldRejected),
                PromptFormat = get("prompt_format", f.PromptFormat), ChosenFormat = get("chosen_format", f.ChosenFormat), RejectedFormat = get("rejected_format", f.RejectedFormat),
            };
        }

        /// <summary>Entries of keys that are refused as a whole still get their typos caught.</summary>
        void CheckEntryKeys(YamlNode node, FrozenSet<string> known)
        {
            IEnumerable<YamlNode> items = node is YamlSequenceNode seq ? seq.Children : [node];
            foreach (var item in items.OfType<YamlMappingNode>())
                foreach (var k in item.Children.Keys.OfType<YamlScalarNode>())
                    if (!known.Contains(k.Value ?? "")) unknown.Add((k.Value ?? "", Spot.In(path, k), Closest(k.Value ?? "", known)));
        }

        void ThrowUnknown()
        {
            static string Hint(string? s) => s != null ? $"did you mean '{s}'?" : "";
            if (unknown.Count == 1)
            {
                var (key, at, suggestion) = unknown[0];
                throw new UserError($"{at.Full}: unknown key '{key}'" + (suggestion != null ? $"; {Hint(suggestion)}" : "."));
            }
            if (unknown.Count > 1)
                throw new UserError($"{path}: unknown keys " + string.Join(", ", unknown.OrderBy(u => u.At.Line).Select(u =>
                    $"'{u.Key}' at {u.At.Short}" + (u.Suggestion != null ? $" ({Hint(u.Suggestion)})" : ""))) + ".");
        }

        bool IsGiven(string key) => key switch
        {
            "pretraining_dataset" => c.PretrainingDataset.Count > 0,
            "streaming" => c.Streaming,
            _ => set.ContainsKey(key),
        };

        string At(string key) => spots.TryGetValue(key, out var e) ? e.At.Full : path;

        /// <summary>Configs Axolotl itself rejects, in its terms; checked before anything is refused as unsupported.</summary>
        void CheckContradictions()
        {
            void Fail(string key, string message) => throw new UserError($"{At(key)}: {message}");
            if (string.IsNullOrWhiteSpace(c.BaseModel)) Fail("", "'base_model' is required (a Hugging Face model folder).");
            if (c.Datasets.Count == 0 && !IsGiven("pretraining_dataset")) Fail("", "either 'datasets' or 'pretraining_dataset' is required.");
            if (c.LearningRate is null) Fail("", "'learning_rate' is required.");
            if (c.Adapter == AdapterKind.Qlora && c.LoadIn8Bit) Fail("load_in_8bit", "adapter: qlora loads the model in 4 bits, not with load_in_8bit; use load_in_4bit: true.");
            if (c.Adapter == AdapterKind.Qlora && !c.LoadIn4Bit) Fail("adapter", "adapter: qlora requires load_in_4bit: true.");
            if (c.LoadIn4Bit && c.LoadIn8Bit) Fail("load_in_8bit", "load_in_4bit and load_in_8bit are both set; a model loads with one of them.");
            if (c.Adapter is null && (c.LoadIn4Bit || c.LoadIn8Bit))
                Fail(c.LoadIn4Bit ? "load_in_4bit" : "load_in_8bit", "load_in_8bit and load_in_4bit need an adapter (lora or qlora); for a full fine-tune turn them off.");
            if (c.Adapter is null && c.LoraModelDir is not null) Fail("lora_model_dir", "'lora_model_dir' is set but 'adapter' is not; add 'adapter: lora'.");
            if (c.WarmupSteps is not null && c.WarmupRatio is not null) Fail("warmup_ratio", "warmup_steps and warmup_ratio are mutually exclusive; set one.");
            if (c.BatchSize is not null && spots.ContainsKey("gradient_accumulation_steps"))
                Fail("batch_size", "set only one of gradient_accumulation_steps or batch_size (batch_size = micro_batch_size × gradient_accumulation_steps).");
            if (IsGiven("streaming") && c.MaxSteps is null) Fail("streaming", "max_steps must be set when streaming: the length of a stream is unknown, so the schedule needs it.");
            if (IsGiven("pretraining_dataset") && c.MaxSteps is null) Fail("pretraining_dataset", "max_steps must be set with pretraining_dataset: the length of a stream is unknown, so the schedule needs it.");
            if (c.ValSetSize != 0 && (IsGiven("streaming") || IsGiven("pretraining_dataset")))
                Fail("val_set_size", "val_set_size is not supported with streaming or pretraining_dataset; use test_datasets for evaluation.");
            // Axolotl refuses several streamed datasets with packing; without it, it merges them, which is not built here.
            if (IsGiven("streaming") && !IsGiven("pretraining_dataset") && c.Datasets.Count > 1)
                Fail("datasets", $"streaming reads one dataset here ({c.Datasets.Count} are listed): Axolotl does not pack several streamed datasets, and merging them without packing is not built yet; list one dataset or turn streaming off.");
            if (c.DatasetExactDeduplication && (IsGiven("streaming") || IsGiven("pretraining_dataset")))
                Fail("dataset_exact_deduplication", "dataset_exact_deduplication is not available for streaming datasets.");
            if (c.ValSetSize != 0 && c.TestDatasets.Count > 0) Fail("val_set_size", "set either val_set_size or test_datasets for evaluation, not both.");
            Trackers.CheckEvalKeys(c, IsGiven, Fail);
            if (c.SamplePacking && IsGiven("rl")) Fail("sample_packing", "sample_packing: true does not work with RLHF training (rl).");
            PartialTrainingKeys.Check(c, Fail);
            // TRL's KTOTrainer: with one example per batch the KL estimate would be the example's own reward.
            if (c.Rl == RlMethod.Kto && c.MicroBatchSize <= 1) Fail("micro_batch_size", "rl: kto needs micro_batch_size of at least 2: the KL term is estimated from the other examples of each batch.");
            // Preference types need rl, and rl reads only its own types (an unknown type is refused with the other keys).
            foreach (var d in c.Datasets.Concat(c.TestDatasets))
            {
                var type = d.UserDefined != null ? "user_defined" : d.Type;
                if (c.Rl is RlMethod.Dpo or RlMethod.Ipo or RlMethod.Simpo or RlMethod.Orpo or RlMethod.Kto && (type is null || DatasetTypes.Preference.IsKnown(type) || DatasetTypes.IsImplemented(type))
                    && !DatasetTypes.Preference.For(c.Rl.Value).Contains(DatasetTypes.Preference.Canonical(type)))
                    throw new UserError($"{d.Origin}: dataset type '{type}' is not a type of rl: {Spelling(c.Rl.Value)}; use one of {string.Join(", ", DatasetTypes.Preference.For(c.Rl.Value))}.");
                if (c.Rl is null && type != null && !DatasetTypes.IsImplemented(type) && DatasetTypes.Preference.IsKnown(type) && d.UserDefined == null)
                    throw new UserError($"{d.Origin}: dataset type '{type}' is a preference type; it needs rl: (dpo, ipo, simpo, orpo, kto).");
            }
            RewardModels.CheckContradictions(c, Fail);
            if (c.Adapter != null && IsGiven("flash_attn_fuse_mlp")) Fail("flash_attn_fuse_mlp", "flash_attn_fuse_mlp (fused modules) is not supported with LoRA/QLoRA.");
            if (IsGiven("deepspeed") && IsGiven("fsdp")) Fail("fsdp", "deepspeed and fsdp cannot be used together.");
            if (IsGiven("max_memory") && IsGiven("gpu_memory_limit")) Fail("gpu_memory_limit", "max_memory and gpu_memory_limit are mutually exclusive.");
            try { Planning.MemoryBudget.FromMaxMemory(c.MaxMemory); }
            catch (Exception e) when (e is FormatException or OverflowException) { Fail("max_memory", $"max_memory {e.Message}."); }
            if (set.TryGetValue("chat_template", out var template) && template.Node is YamlScalarNode { Value: "jinja" } && !IsGiven("chat_template_jinja"))
                Fail("chat_template", "chat_template: jinja needs the template itself in chat_template_jinja.");

            var legacy = AxolotlKeys.LegacyAttentionFlags.Where(f => IsGiven(f.Flag)).Select(f => f.Flag).ToList();
            if (c.AttnImplementation is { } impl)
            {
                if (legacy.Count > 0)
                    Fail("attn_implementation", $"attn_implementation cannot be combined with the legacy attention flags ({string.Join(", ", legacy)}); set only attn_implementation.");
                if (AxolotlKeys.AttentionShortForms.TryGetValue(impl, out var canonical))
                    Fail("attn_implementation", $"attn_implementation '{impl}' is not accepted; use the canonical name '{canonical}'.");
                if (!AxolotlKeys.AttentionImplementations.Contains(impl) && !impl.Contains('/'))
                    Fail("attn_implementation", $"attn_implementation '{impl}' is not a recognized backend ({string.Join(", ", AxolotlKeys.AttentionImplementations.Order())}, or a hub-kernel path containing '/').");
            }
        }

        /// <summary>Keys we implement, set to values we do not.</summary>
        void RefuseByValue()
        {
            void Refuse(string key) => refused.Add(new Refusal(key, Shown(key, spots[key].Node), spots[key].At));
            if (c.Adapter is AdapterKind.LlamaAdapter) Refuse("adapter");
            if (c.Rl is RlMethod.Gdpo or RlMethod.Grpo or RlMethod.Ebft) Refuse("rl");
            if (!c.PretrainMultipackAttn && c.PretrainingDataset.Count > 0 && c.SamplePacking) Refuse("pretrain_multipack_attn");
            if ((c.Streaming || c.PretrainingDataset.Count > 0) && c.TestDatasets.Count > 0) Refuse("test_datasets");
            if (c.Streaming && c.PretrainingDataset.Count == 0 && c.Rl != null) Refuse("streaming"); // streamed preference pairs
            // Axolotl quantizes to 4 bits only for adapter: qlora; with lora, load_in_4bit would load a 16-bit model.
            if (c.Adapter == AdapterKind.Lora && c.LoadIn4Bit) Refuse("load_in_4bit");
            if (!ImplementedOptimizers.Contains(c.Optimizer) && !AxolotlKeys.AdamWVariants.Contains(c.Optimizer) && !AxolotlKeys.LionVariants.Contains(c.Optimizer)) Refuse("optimizer");
            if (!ImplementedSchedulers.Contains(c.LrScheduler)) Refuse("lr_scheduler");
            if (c.ModelType is { } type && !type.EndsWith("ForCausalLM", StringComparison.Ordinal) && !RewardModels.HeadMatches(c)) Refuse("model_type"); // e.g. a classifier head without reward_model
            if (c.NumLabels != null && !c.RewardModel && !c.ProcessRewardModel) Refuse("num_labels");
            if (!c.TokenizerUseFast) Refuse("tokenizer_use_fast");
            if (!c.SaveSafetensors) Refuse("save_safetensors");
            if (set.TryGetValue("plugins", out var plugins) && !Plugins(plugins.Node).All(IsSpeedOnlyPlugin))
                refused.Add(new Refusal("plugins", "plugins: " + string.Join(", ", Plugins(plugins.Node).Where(p => !IsSpeedOnlyPlugin(p))), plugins.At));
        }

        void ThrowRefused()
        {
            if (refused.Count == 0) return;
            var ordered = refused.OrderBy(r => r.At.Line).ToList();
            var keys = ordered.Select(r => r.Key).ToList();
            static string Why(Refusal r) => AxolotlKeys.RefusedOnPurpose.TryGetValue(r.Key, out var reason) ? $" [refused on purpose: {reason}]" : "";
            if (ordered.Count == 1)
                throw new UnsupportedKeysError(AxolotlKeys.RefusedOnPurpose.TryGetValue(ordered[0].Key, out var why)
                    ? $"{ordered[0].At.Full}: '{ordered[0].Shown}' is refused on purpose: {why}; remove it or leave it empty."
                    : $"{ordered[0].At.Full}: '{ordered[0].Shown}' is an Axolotl option that Axolotl.NET does not implement yet; remove it or leave it empty.", keys);
            throw new UnsupportedKeysError($"{path}: Axolotl options that Axolotl.NET does not implement yet: " +
                string.Join(", ", ordered.Select(r => $"'{r.Shown}' ({r.At.Short}){Why(r)}")) + "; remove them or leave them empty.", keys);
        }

        /// <summary>Axolotl's derived values, and what runs instead of each speed-only key.</summary>
        void Resolve()
        {
            void WarnKey(Entry e, string key, string note) { c.WarnedKeys.Add(key); Warn(e.At, $"'{Shown(key, e.Node)}' {note}."); }

            // transformers' device_map naming one device ("cpu", "cuda:0", a GPU number, or {"": …}) puts the whole
            // model there, which is what 'device' says here; "auto" and per-module maps stay a warning.
            bool deviceMapped = false;
            if (set.TryGetValue("device_map", out var deviceMap) && SingleDevice(deviceMap.Node) is { } mapped)
            {
                if (spots.ContainsKey("device") && c.Device != mapped)
                    throw new UserError($"{deviceMap.At.Full}: device_map '{mapped}' and device '{c.Device}' disagree; set only device.");
                c.Device = mapped;
                c.Sources["device"] = $"device_map ({deviceMap.At.Short})";
                deviceMapped = true;
            }
            foreach (var (key, e) in set)
                if (!(key == "device_map" && deviceMapped) && AxolotlKeys.Warned.TryGetValue(key, out var note)) WarnKey(e, key, note);

            if (c.PretrainingDataset.Count > 1)
                Warn(spots["pretraining_dataset"].At, $"pretraining_dataset has {c.PretrainingDataset.Count} entries; only the first is streamed, as in Axolotl.");
            if (c.PretrainingDataset.Count > 0 && c.Datasets.Count > 0)
                Warn(spots["datasets"].At, "'datasets' is not read when pretraining_dataset is set, as in Axolotl.");
            if (c.PretrainingDataset.Count > 0) c.Streaming = true;
            foreach (var (key, text) in Trackers.Resolve(c)) Warn(spots.TryGetValue(key, out var e) ? e.At : new Spot(path, path, int.MaxValue), text);

            // Legacy flags mean an attn_implementation (the first set one in Axolotl's priority order wins).
            string? requested = c.AttnImplementation, from = requested != null ? "attn_implementation" : null;
            foreach (var (flag, implementation) in AxolotlKeys.LegacyAttentionFlags.Where(f => IsGiven(f.Flag)))
            {
                if (from == null) (requested, from) = (implementation, flag);
                WarnKey(set[flag], flag, $"is Axolotl's legacy flag for attn_implementation: {implementation}; " +
                    (implementation == "sdpa" ? "that is what runs" : "PyTorch SDPA attention runs instead (same math)"));
            }
            if (from == "attn_implementation" && requested != "sdpa")
                WarnKey(spots[from], from, "is a GPU attention kernel; PyTorch SDPA attention runs instead (same math)");
            c.AttnImplementation = "sdpa";
            if (from == null) c.Sources["attn_implementation"] = "what runs";
            else if (requested != "sdpa") c.Sources["attn_implementation"] = (from == "attn_implementation" ? "" : $"{from} → ") + $"{requested} → sdpa";

            if (AxolotlKeys.AdamWVariants.Contains(c.Optimizer))
            {
                WarnKey(spots["optimizer"], "optimizer", "is AdamW with compressed, paged or fused GPU state; adamw_torch runs instead (AdamW with fp32 state)");
                c.Sources["optimizer"] = $"{c.Optimizer} → adamw_torch";
                c.Optimizer = "adamw_torch";
            }
            if (c.ReloraCpuOffload)
                WarnKey(spots["relora_cpu_offload"], "relora_cpu_offload", "only moves ReLoRA's merge arithmetic to the CPU; here it runs where the model is (same result)");
            if (c.Optimizer == "paged_adamw_8bit")
                WarnKey(spots["optimizer"], "optimizer", "also pages its 8-bit state through CUDA unified memory; the same 8-bit AdamW runs here without paging (same math)");
            if (c.GradientCheckpointing is GradientCheckpointingMode.Offload or GradientCheckpointingMode.OffloadDisk)
                WarnKey(spots["gradient_checkpointing"], "gradient_checkpointing", "also moves the kept layer inputs off the GPU; here they stay in memory and each layer is recomputed as with true (same gradients)");
            if (AxolotlKeys.LionVariants.Contains(c.Optimizer))
            {
                WarnKey(spots["optimizer"], "optimizer", "is Lion with 8-bit or paged GPU state; lion_32bit runs instead (the same update, fp32 state)");
                c.Sources["optimizer"] = $"{c.Optimizer} → lion_32bit";
                c.Optimizer = "lion_32bit";
            }
            if (set.TryGetValue("bfloat16", out var bfloat16))
            {
                c.Bf16 = Bf16Mode.True;
                c.PureBf16 = true;
                c.Sources["bf16"] = "bfloat16";
            }
            if (set.TryGetValue("plugins", out var plugins))
                foreach (var plugin in Plugins(plugins.Node))
                    Warn(plugins.At, $"plugin '{plugin}' only swaps in faster GPU kernels; PyTorch's standard ops run instead (same math).");

            int micro = c.MicroBatchSize;
            if (c.BatchSize is int batch)
            {
                if (batch < micro) throw new UserError($"{At("batch_size")}: batch_size {batch} is smaller than micro_batch_size {micro}.");
                c.GradientAccumulationSteps = batch / micro;
                c.Sources["gradient_accumulation_steps"] = "batch_size ÷ micro_batch_size";
                if (batch % micro != 0)
                    Warn(spots["batch_size"].At, $"batch_size {batch} is not a multiple of micro_batch_size {micro}; gradient_accumulation_steps is {c.GradientAccumulationSteps}, rounded down as in Axolotl.");
            }
            else
            {
                c.BatchSize = micro * c.GradientAccumulationSteps;
                c.Sources["batch_size"] = "micro_batch_size × gradient_accumulation_steps";
            }
            void Follow(string key, string source) => c.Sources[key] = $"follows {source}";
            if (c.EvalBatchSize is null) { c.EvalBatchSize = micro; Follow("eval_batch_size", "micro_batch_size"); }
            if (c.EvalSamplePacking is null) { c.EvalSamplePacking = c.SamplePacking; Follow("eval_sample_packing", "sample_packing"); }
            if (c.PadToSequenceLen is null && c.SamplePacking) { c.PadToSequenceLen = true; Follow("pad_to_sequence_len", "sample_packing"); }
            RewardModels.Resolve(c, (key, text) => Warn(spots[key].At, text), Follow);
            if (c.BaseModelConfig is null) { c.BaseModelConfig = c.BaseModel; Follow("base_model_config", "base_model"); }
            if (c.TokenizerConfig is null) { c.TokenizerConfig = c.BaseModelConfig; Follow("tokenizer_config", "base_model_config"); }
            void Default(string key) => c.Sources[key] = "transformers' default";
            // Muon's factory hands its AdamW part betas (0.9, 0.95) unless both adam_beta1 and adam_beta2 are set.
            if (c.Optimizer == "muon" && !(spots.ContainsKey("adam_beta1") && spots.ContainsKey("adam_beta2")))
            {
                (c.AdamBeta1, c.AdamBeta2) = (0.9, 0.95);
                c.Sources["adam_beta1"] = c.Sources["adam_beta2"] = "Muon's default for its AdamW part";
            }
            if (c.MaxGradNorm is null) { c.MaxGradNorm = 1.0; Default("max_grad_norm"); }
            if (c.AdamBeta1 is null) { c.AdamBeta1 = 0.9; Default("adam_beta1"); }
            if (c.AdamBeta2 is null) { c.AdamBeta2 = 0.999; Default("adam_beta2"); }
            if (c.AdamEpsilon is null) { c.AdamEpsilon = 1e-8; Default("adam_epsilon"); }
            // Axolotl's normalize_config: per-epoch counts become a fraction of the run (transformers then saves or
            // evaluates every ceil(fraction × total steps)); a fraction of 1 or more is left to the per-epoch rule.
            if (c.SavesPerEpoch is int saves && 1.0 / (saves * c.NumEpochs) is var saveFraction && saveFraction < 1)
            {
                c.SaveSteps = saveFraction;
                c.Sources["save_steps"] = "1 / (saves_per_epoch × num_epochs), a fraction of the run";
            }
            if (c.EvalsPerEpoch is int evals && c.ValSetSize > 0 && 1.0 / (evals * c.NumEpochs) is var evalFraction && evalFraction < 1)
            {
                c.EvalSteps = evalFraction;
                c.Sources["eval_steps"] = "1 / (evals_per_epoch × num_epochs), a fraction of the run";
            }
            // These need the step count, known once the data is tokenized.
            if (c.WarmupSteps is null && c.WarmupRatio is null) c.Sources["warmup_steps"] = "min(int(0.03 × total steps), 100) at train time";
            if (c.LoggingSteps is null) c.Sources["logging_steps"] = "max(min(int(0.005 × total steps), 10), 1) at train time";
        }
    }

    static string KeyText(YamlNode key, string path) => key is YamlScalarNode s ? s.Value ?? ""
        : throw new UserError($"{Spot.In(path, key).Full}: a key must be a name, not a list or mapping.");

    static IEnumerable<string> Plugins(YamlNode node) =>
        (node is YamlSequenceNode seq ? seq.Children : [node]).OfType<YamlScalarNode>().Select(s => s.Value ?? "");

    /// <summary>The one device a device_map puts everything on (canonical <c>device</c> form), or null.</summary>
    static string? SingleDevice(YamlNode node) => node switch
    {
        YamlScalarNode s when int.TryParse(s.Value, NumberStyles.None, CultureInfo.InvariantCulture, out var gpu) => $"cuda:{gpu}",
        YamlScalarNode s => Runtime.ComputeDevice.Normalize(s.Value) is { } d and not "auto" ? d : null,
        YamlMappingNode m when m.Children.Count == 1 && m.Children.Keys.Single() is YamlScalarNode { Value: "" } => SingleDevice(m.Children.Values.Single()),
        _ => null,
    };

    static bool IsSpeedOnlyPlugin(string plugin) => AxolotlKeys.SpeedOnlyPlugins.Contains(plugin.Split('.')[^1]);

    /// <summary>"key: value" for a message, on one line; long values are abbreviated.</summary>
    static string Shown(string key, YamlNode node)
    {
        var value = node switch
        {
            YamlScalarNode s => (s.Value ?? "").Replace("\n", "\\n").Replace("\r", "\\r"),
            YamlSequenceNode seq when seq.Children.All(n => n is YamlScalarNode) => $"[{string.Join(", ", seq.Children.Select(n => ((YamlScalarNode)n).Value))}]",
            YamlSequenceNode => "[...]",
            _ => "{...}",
        };
        return $"{key}: {(value.Length > 60 ? value[..57] + "..." : value)}";
    }

    static object? Convert(YamlNode node, Type type, string key, string where)
    {
        var underlying = Nullable.GetUnderlyingType(type) ?? type;
        if (underlying == typeof(Dictionary<string, string>) || underlying == typeof(Dictionary<string, List<string>>))
        {
            if (node is YamlScalarNode { Value: "false" }) return null; // --no-<key>: not set
            if (node is not YamlMappingNode map) throw new UserError($"{where}: '{key}' must be a mapping.");
            var listValues = underlying == typeof(Dictionary<string, List<string>>);
            var dict = listValues ? (System.Collections.IDictionary)new Dictionary<string, List<string>>() : new Dictionary<string, string>();
            foreach (var (k, v) in map.Children)
                dict[k is YamlScalarNode name ? name.Value ?? "" : throw new UserError($"{where}: '{key}' names must be single values.")] = Convert(v, listValues ? typeof(List<string>) : typeof(string), key, where);
            return dict;
        }
        if (underlying == typeof(JsonObject))
        {
            if (node is YamlScalarNode { Value: "false" }) return null; // --no-<key>: not set
            if (node is not YamlMappingNode mapping) throw new UserError($"{where}: '{key}' must be a mapping of config.json keys to values, e.g. {{output_router_logits: true}}.");
            return (JsonObject)ToJson(mapping, key, where)!;
        }
        if (underlying == typeof(List<string>))
        {
            if (node is YamlScalarNode single) return new List<string> { single.Value ?? "" };
            if (node is not YamlSequenceNode seq) throw new UserError($"{where}: '{key}' must be a list of strings.");
            return seq.Children.Select(c => c is YamlScalarNode s ? s.Value ?? "" : throw new UserError($"{where}: '{key}' entries must be strings.")).ToList();
        }
        if (underlying == typeof(List<double>))
        {
            var items = node is YamlSequenceNode list ? list.Children : [node];
            return items.Select(c => (double)Convert(c, typeof(double), key, where)!).ToList();
        }
        if (underlying == typeof(List<int>))
        {
            var items = node is YamlSequenceNode list ? list.Children : [node];
            return items.Select(c => (int)Convert(c, typeof(int), key, where)!).ToList();
        }
        if (node is not YamlScalarNode scalar) throw new UserError($"{where}: '{key}' must be a single value, not a list or mapping.");
        var text = (scalar.Value ?? "").Trim();
        // A quoted string is taken as written, as PyYAML reads it: step_separator: "\n" is a newline, not empty.
        if (underlying == typeof(string)) return scalar.Style is ScalarStyle.DoubleQuoted or ScalarStyle.SingleQuoted ? scalar.Value ?? "" : text;
        if (underlying.IsEnum)
        {
            var spellings = Spellings(underlying);
            // YAML 1.1 booleans for the sets that are true/false plus more (gradient_checkpointing, bf16).
            var lower = text.ToLowerInvariant();
            if (!spellings.ContainsKey(lower) && spellings.ContainsKey("true") && spellings.ContainsKey("false"))
                lower = lower switch { "yes" or "on" => "true", "no" or "off" => "false", _ => lower };
            return spellings.TryGetValue(lower, out var value) ? value
                : throw new UserError($"{where}: '{key}' must be one of {string.Join(", ", spellings.Keys)}, not '{text}'.");
        }
        if (underlying == typeof(bool))
            return text.ToLowerInvariant() switch
            {
                "true" or "yes" or "on" => true,
                "false" or "no" or "off" => false,
                _ => throw new UserError($"{where}: '{key}' must be true or false, not '{text}'."),
            };
        if (underlying == typeof(int))
        {
            // pydantic (lax mode) reads a boolean as 0 or 1: Axolotl's relora example sets jagged_restart_anneal_steps: false.
            if (text.ToLowerInvariant() is "false" or "no" or "off") return 0;
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

    /// <summary>
    /// A YAML value as the JSON value Python's YAML loader would give config.json: plain true/false, null, whole and
    /// real numbers as such, anything quoted or else as a string; mappings and lists element by element.
    /// </summary>
    static JsonNode? ToJson(YamlNode node, string key, string where)
    {
        switch (node)
        {
            case YamlMappingNode map:
                var obj = new JsonObject();
                foreach (var (k, v) in map.Children)
                {
                    if (k is not YamlScalarNode { Value: { Length: > 0 } name })
                        throw new UserError($"{where}: the keys under '{key}' must be config.json key names.");
                    obj[name] = ToJson(v, $"{key}.{name}", where);
                }
                return obj;
            case YamlSequenceNode list:
                return new JsonArray(list.Children.Select(item => ToJson(item, key, where)).ToArray());
            case YamlScalarNode { Style: not ScalarStyle.Plain } quoted:
                return JsonValue.Create(quoted.Value ?? "");
            case YamlScalarNode scalar:
                var text = (scalar.Value ?? "").Trim();
                if (text is "" or "~" or "null" or "Null" or "NULL") return null;
                if (text is "true" or "True" or "TRUE") return JsonValue.Create(true);
                if (text is "false" or "False" or "FALSE") return JsonValue.Create(false);
                if (long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var whole)) return JsonValue.Create(whole);
                if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var real) && double.IsFinite(real)) return JsonValue.Create(real);
                return JsonValue.Create(text);
            default:
                throw new UserError($"{where}: '{key}' holds a YAML value that is not a mapping, list or single value.");
        }
    }

    /// <summary>Ranges of the values we implement.</summary>
    static void Validate(AxolotlConfig c, string path)
    {
        void Fail(string message) => throw new UserError($"{path}: {message}");
        // Axolotl tests these for truth (`if cfg.evals_per_epoch:`), so 0 means unset, as its own example configs use it.
        if (c.EvalsPerEpoch == 0) c.EvalsPerEpoch = null;
        if (c.SavesPerEpoch == 0) c.SavesPerEpoch = null;
        if (c.LearningRate <= 0) Fail("'learning_rate' must be positive.");
        if (c.SequenceLen < 2) Fail("'sequence_len' must be at least 2.");
        if (c.ExcessLengthStrategy is not ("drop" or "truncate" or "raise"))
            Fail($"excess_length_strategy '{c.ExcessLengthStrategy}' is not one Axolotl has (drop, truncate, raise).");
        if (c.MicroBatchSize < 1) Fail("'micro_batch_size' must be at least 1.");
        if (c.GradioServerPort is < 0 or > 65535) Fail("'gradio_server_port' must be a port number (0 to 65535).");
        if (c.GradioMaxNewTokens is < 1) Fail("'gradio_max_new_tokens' must be at least 1.");
        if (c.GradioTemperature is < 0) Fail("'gradio_temperature' must be 0 or more.");
        if (c.GradientAccumulationSteps < 1) Fail("'gradient_accumulation_steps' must be at least 1.");
        if (c.BatchSize is < 1) Fail("'batch_size' must be at least 1.");
        if (c.EvalBatchSize is < 1) Fail("'eval_batch_size' must be at least 1.");
        if (c.SamplePackingGroupSize < 1) Fail("'sample_packing_group_size' must be at least 1.");
        if (c.SamplePackingBinSize < 1) Fail("'sample_packing_bin_size' must be at least 1.");
        if (c.NumEpochs <= 0 && c.MaxSteps is null) Fail("'num_epochs' must be positive (or set 'max_steps').");
        if (c.MaxSteps is <= 0) Fail("'max_steps' must be positive.");
        if (c.StreamingMultipackBufferSize < 1) Fail("'streaming_multipack_buffer_size' must be at least 1.");
        if (c.HasLora && c.LoraModelDir is null)
        {
            if (c.LoraR is null or <= 0) Fail("adapter lora needs 'lora_r' (a positive rank).");
            if (c.LoraAlpha is null) Fail("adapter lora needs 'lora_alpha'.");
            if ((c.LoraTargetModules is null || c.LoraTargetModules.Count == 0) && !c.LoraTargetLinear)
                Fail("adapter lora needs 'lora_target_modules' or 'lora_target_linear: true'.");
        }
        if (c.LoraDropout is < 0 or >= 1) Fail("'lora_dropout' must be in [0, 1).");
        CheckSchedulerAndRelora(c, Fail);
        if (c.WarmupRatio is < 0 or > 1) Fail("'warmup_ratio' must be in [0, 1].");
        if (c.CosineMinLrRatio is < 0 or > 1) Fail("'cosine_min_lr_ratio' must be in [0, 1].");
        if (c.CosineConstantLrRatio is < 0 or > 1) Fail("'cosine_constant_lr_ratio' must be in [0, 1].");
        if (c.ValSetSize < 0) Fail("'val_set_size' must be 0 (no validation), a fraction below 1, or a row count.");
        if (c.BadRows is not ("fail" or "skip")) Fail($"'bad_rows' must be fail or skip, not '{c.BadRows}'.");
        c.Device = Runtime.ComputeDevice.Normalize(c.Device) ?? throw new UserError($"{path}: 'device' must be {Runtime.ComputeDevice.Values}, not '{c.Device}'.");
        if (c.MinSampleLen < 1) Fail("'min_sample_len' must be at least 1.");
        if (c.EvalSteps is not null && c.EvalsPerEpoch is not null) Fail("set either 'eval_steps' or 'evals_per_epoch', not both.");
        if (c.EvalSteps is <= 0) Fail("'eval_steps' must be positive.");
        if (c.EvalsPerEpoch is < 0) Fail("'evals_per_epoch' must be positive.");
        if (c.SaveSteps is not null && c.SavesPerEpoch is not null) Fail("set either 'save_steps' or 'saves_per_epoch', not both.");
        if (c.SaveSteps is <= 0) Fail("'save_steps' must be positive.");
        if (c.SavesPerEpoch is < 0) Fail("'saves_per_epoch' must be positive.");
        if (c.SaveTotalLimit is <= 0) Fail("'save_total_limit' must be positive.");
        if (c.MetricForBestModel is { } metric)
        {
            // transformers adds the eval_ prefix to a bare metric name.
            c.MetricForBestModel = metric.StartsWith("eval_") ? metric : "eval_" + metric;
            if (c.MetricForBestModel is not ("eval_loss" or "eval_perplexity"))
                Fail($"metric_for_best_model '{metric}' is not a metric the evaluation computes (eval_loss, eval_perplexity).");
        }
        if (c.EarlyStoppingPatience is <= 0) Fail("'early_stopping_patience' must be a positive number of evaluations.");
        if (c.EarlyStoppingPatience is not null && (c.SaveSteps is null || c.EvalSteps is null || c.SaveSteps % c.EvalSteps != 0))
            Fail("early_stopping_patience needs save_steps and eval_steps, with save_steps a multiple of eval_steps (as Axolotl requires).");
        if (c.EarlyStoppingPatience is not null || c.LoadBestModelAtEnd)
        {
            string key = c.LoadBestModelAtEnd ? "load_best_model_at_end" : "early_stopping_patience";
            if (c.ValSetSize <= 0 || c.EvalStrategy == IntervalStrategy.No) Fail($"{key} needs evaluations: set val_set_size and leave eval_strategy on.");
            if (c.LoadBestModelAtEnd && c.SaveStrategy == IntervalStrategy.No) Fail("load_best_model_at_end needs checkpoints to choose from; save_strategy is no.");
            if (c.LoadBestModelAtEnd && c.SaveSteps is double save && c.EvalSteps is double every && save % every != 0)
                Fail($"load_best_model_at_end needs save_steps ({save}) to be a multiple of eval_steps ({every}), so every checkpoint has an evaluation.");
        }
        if (c.ResumeFromCheckpoint != null && !Directory.Exists(c.ResumeFromCheckpoint))
            Fail($"resume_from_checkpoint: folder '{c.ResumeFromCheckpoint}' does not exist.");
    }

    /// <summary>What transformers' schedule functions and Axolotl's ReLoRA validation reject.</summary>
    static void CheckSchedulerAndRelora(AxolotlConfig c, Action<string> fail)
    {
        if (c.LrSchedulerKwargs is { } kwargs && Training.LrSchedule.Kwargs.TryGetValue(c.LrScheduler, out var accepted)
            && c.LrScheduler is not ("constant" or "constant_with_warmup" or "inverse_sqrt" or "rex")
            && kwargs.Select(kv => kv.Key).FirstOrDefault(k => !accepted.Contains(k)) is { } unknown)
            fail($"lr_scheduler_kwargs: '{unknown}' is not an argument of lr_scheduler {c.LrScheduler} ({(accepted.Length == 0 ? "it takes none" : string.Join(", ", accepted))}).");
        bool Has(string key) => c.LrSchedulerKwargs?[key] != null;
        if (c.LrScheduler is "cosine_with_min_lr" or "cosine_warmup_with_min_lr" && Has("min_lr") == Has("min_lr_rate"))
            fail($"lr_scheduler {c.LrScheduler} needs exactly one of min_lr or min_lr_rate in lr_scheduler_kwargs.");
        if (c.LrScheduler == "warmup_stable_decay")
        {
            if (!Has("num_decay_steps")) fail("lr_scheduler warmup_stable_decay needs num_decay_steps in lr_scheduler_kwargs.");
            foreach (var key in new[] { "warmup_type", "decay_type" })
                if (c.LrSchedulerKwargs?[key]?.ToString() is { } type && type is not ("linear" or "cosine" or "1-sqrt"))
                    fail($"lr_scheduler_kwargs: {key} must be linear, cosine or 1-sqrt, not '{type}'.");
        }
        if (c.LrScheduler == "polynomial" && c.LrSchedulerKwargs?["lr_end"] is { } end && double.Parse(end.ToString(), CultureInfo.InvariantCulture) >= c.LearningRate)
            fail($"lr_scheduler_kwargs: lr_end ({end}) must be smaller than learning_rate ({c.LearningRate}).");
        if (c.JaggedRestartSteps is <= 0) fail("'jagged_restart_steps' must be a positive number of steps.");
        if (!c.Relora) return;
        // Axolotl's check_relora, and its callback's optimizer check.
        if (c.JaggedRestartSteps is null) fail("jagged_restart_steps must be set to use ReLoRA.");
        if (c.Adapter is not (AdapterKind.Lora or AdapterKind.Qlora)) fail("relora needs adapter: lora or qlora (it merges and restarts a LoRA).");
        if (c.Deepspeed != null) fail("deepspeed is not supported with ReLoRA.");
        if (!c.Optimizer.Contains("adam", StringComparison.OrdinalIgnoreCase)) fail($"relora prunes Adam's moments at each restart; optimizer {c.Optimizer} is not supported with ReLoRA.");
        if (c.ReloraPruneMethod is not (null or "magnitude" or "random" or "reset")) fail($"'relora_prune_method' must be magnitude, random or reset, not '{c.ReloraPruneMethod}'.");
        if (c.ReloraPruneRatio is < 0 or > 1) fail("'relora_prune_ratio' must be in [0, 1].");
    }

    static bool IsNull(YamlNode node) =>
        node is YamlScalarNode s && s.Style == ScalarStyle.Plain && (s.Value is null or "" or "~" or "null" or "Null" or "NULL");

    /// <summary>Set means "asks for something": not empty, not false (YAML 1.1's no/off too, as PyYAML reads them), not [] or {}.</summary>
    static bool IsSet(YamlNode node) => node switch
    {
        _ when IsNull(node) => false,
        YamlScalarNode { Style: ScalarStyle.Plain, Value: { } v } when v.ToLowerInvariant() is "false" or "no" or "off" => false,
        YamlSequenceNode seq => seq.Children.Count > 0,
        YamlMappingNode map => map.Children.Count > 0,
        _ => true,
    };

    static Dictionary<string, PropertyInfo> Properties(Type type) => KeyProperties(type).ToDictionary(KeyOf, p => p, StringComparer.Ordinal);

    /// <summary>The properties that are config keys: public and settable by the user (not SourcePath or derived bookkeeping).</summary>
    public static IEnumerable<PropertyInfo> KeyProperties(Type type) =>
        type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite && p.SetMethod!.IsPublic && p.Name != nameof(AxolotlConfig.SourcePath));

    /// <summary>The Axolotl key of a config property.</summary>
    public static string KeyOf(PropertyInfo property) => property.GetCustomAttribute<AxolotlKeyAttribute>()?.Key ?? SnakeCase(property.Name);

    /// <summary>How a value of one of Axolotl's fixed sets is written in a config: snake_case of its name unless the
    /// member says otherwise (llama-adapter).</summary>
    public static string Spelling(Enum value) =>
        value.GetType().GetField(value.ToString())?.GetCustomAttribute<AxolotlKeyAttribute>()?.Key ?? SnakeCase(value.ToString());

    /// <summary>Every value of a fixed set by its spelling, in declaration order.</summary>
    public static Dictionary<string, Enum> Spellings(Type enumType) =>
        Enum.GetValues(enumType).Cast<Enum>().ToDictionary(Spelling, v => v);

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
        var best = known.Select(k => (k, d: Levenshtein(key, k))).OrderBy(x => x.d).ThenBy(x => x.k, StringComparer.Ordinal).FirstOrDefault();
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
