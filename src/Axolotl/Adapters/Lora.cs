using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Adapters;

/// <summary>What a LoRA adapter is: the fields of PEFT's LoraConfig we implement.</summary>
internal sealed record LoraSettings
{
    public required int Rank { get; init; }
    public required double Alpha { get; init; }
    public double Dropout { get; init; }
    /// <summary>Module names (matched as PEFT does: the whole path or its last components) or one regex.</summary>
    public IReadOnlyList<string> TargetModules { get; init; } = [];
    public string? TargetRegex { get; init; }
    public bool UseRsLora { get; init; }
    public bool UseDora { get; init; }
    /// <summary>Modules trained in full next to the adapter and saved with it (PEFT's modules_to_save), e.g. embed_tokens, lm_head.</summary>
    public IReadOnlyList<string> ModulesToSave { get; init; } = [];
    /// <summary>Only these decoder layer indices get adapters (PEFT's layers_to_transform); null means all.</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    /// <summary>Initialised by LoftQ with this many bits (PEFT's init_lora_weights "loftq"): the base weights are their
    /// quantized values, which loading the adapter reproduces, as PEFT does.</summary>
    public int? LoftqBits { get; init; }
    /// <summary>PEFT's task_type: CAUSAL_LM, or SEQ_CLS / TOKEN_CLS for a classifier, whose head PEFT adds to modules_to_save.</summary>
    public string TaskType { get; init; } = "CAUSAL_LM";
}

/// <summary>Wraps a model's Linear layers in LoRA and moves adapters to and from PEFT's files.</summary>
internal static class Lora
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    /// <summary>PEFT saves adapter weights under this prefix (PeftModel → LoraModel → the HF model).</summary>
    const string PeftPrefix = "base_model.model.";

    /// <summary>All Linear layers but the output head: Axolotl's lora_target_linear.</summary>
    public static IReadOnlyList<string> LinearModuleNames(nn.Module model) =>
        model.named_modules().Where(m => IsLinear(m.module) && m.name is not ("lm_head" or ClassifierHead.Module))
            .Select(m => m.name.Split('.')[^1]).Distinct().Order(StringComparer.Ordinal).ToList();

    /// <summary>Replaces each targeted Linear with a LoraLinear around it and freezes everything else. Returns the wrapped paths.</summary>
    public static IReadOnlyList<string> Apply(nn.Module model, LoraSettings settings)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        var targets = TargetPaths(model, settings);
        if (targets.Count == 0)
            throw new UserError($"lora_target_modules [{string.Join(", ", settings.TargetModules)}] match no Linear layer of the model " +
                                $"(its Linear layers: {string.Join(", ", LinearModuleNames(model))}).");
        foreach (var path in targets)
        {
            var (parent, leaf) = ModuleTree.Parent(model, path);
            var inner = (nn.Module<Tensor, Tensor>)parent.named_children().First(c => c.name == leaf).module;
            ModuleTree.ReplaceChild(parent, leaf, new LoraLinear(inner, settings.Rank, settings.Alpha, settings.Dropout, settings.UseRsLora, settings.UseDora));
        }
        ApplyModulesToSave(model, settings.ModulesToSave, settings.TaskType != "CAUSAL_LM");
        return targets;
    }

    /// <summary>The paths of the Linear layers <see cref="Apply"/> wraps.</summary>
    public static List<string> TargetPaths(nn.Module model, LoraSettings settings) =>
        model.named_modules()
            .Where(m => IsLinear(m.module) && Matches(m.name, settings) && InTransformedLayer(m.name, settings))
            .Select(m => m.name).ToList();

    static bool IsLinear(nn.Module m) => m is Linear or QuantizedLinear;

    /// <summary>PEFT's layers_to_transform: the layer index is the number after the last "name." path part followed by a number.</summary>
    static bool InTransformedLayer(string path, LoraSettings s)
    {
        if (s.LayersToTransform is null) return true;
        var match = Regex.Match(path, @"^.*\.[^.]*\.(\d+)\.");
        return match.Success && s.LayersToTransform.Contains(int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>
    /// PEFT's modules_to_save: each named module (matched on its path's end) becomes a trainable fp32 copy of itself;
    /// its weights are saved with the adapter under the module's own key (base_model.model.lm_head.weight), as PEFT does.
    /// </summary>
    static void ApplyModulesToSave(nn.Module model, IReadOnlyList<string> names, bool classifier)
    {
        foreach (var name in names)
        {
            var found = model.named_modules().Where(m => m.name == name || m.name.EndsWith("." + name, StringComparison.Ordinal)).ToList();
            // PEFT's SEQ_CLS / TOKEN_CLS models list both usual head names; the one the model lacks matches nothing.
            if (found.Count == 0 && classifier && name is "classifier" or ClassifierHead.Module) continue;
            if (found.Count == 0)
                throw new UserError($"lora_modules_to_save: '{name}' names no module of the model" +
                                    (name == "lm_head" && model is CausalLM { lm_head: null } ? " (its lm_head is tied to embed_tokens)." : "."));
            if (model is CausalLM { lm_head: null } && name == "embed_tokens")
                throw new UserError("lora_modules_to_save: embed_tokens is tied to the output head in this model; training a separate copy would untie them, which is not supported.");
            foreach (var (path, module) in found)
            {
                nn.Module copy = module switch
                {
                    Linear l => Copy(l),
                    Embedding e => Copy(e, model is CausalLM lm ? lm.ComputeType : ScalarType.Float32),
                    _ => throw new UserError($"lora_modules_to_save: '{path}' is a {module.GetType().Name}; only Linear and embedding layers can be saved in full."),
                };
                var (parent, leaf) = ModuleTree.Parent(model, path);
                ModuleTree.ReplaceChild(parent, leaf, copy);
            }
        }
    }

    static Linear Copy(Linear l)
    {
        var copy = new Linear(l.InFeatures, l.OutFeatures, l.bias is not null, ScalarType.Float32);
        using (no_grad())
        {
            copy.weight.copy_(l.weight);
            copy.bias?.copy_(l.bias!);
        }
        return copy;
    }

    static Embedding Copy(Embedding e, ScalarType computeType)
    {
        var copy = new Embedding(e.weight.shape[0], e.weight.shape[1], ScalarType.Float32, computeType);
        using (no_grad()) copy.weight.copy_(e.weight);
        return copy;
    }

    /// <summary>Full copies made by <see cref="ApplyModulesToSave"/>: their parameters under PEFT's saved keys.</summary>
    static IEnumerable<(string Key, Tensor Tensor)> ModulesToSaveTensors(nn.Module model, LoraSettings settings) =>
        settings.ModulesToSave.Count == 0 ? [] :
        model.named_parameters()
            .Where(p => p.parameter.requires_grad && !p.name.Contains(".lora_"))
            .Select(p => (PeftPrefix + p.name, (Tensor)p.parameter));

    static bool Matches(string path, LoraSettings s) =>
        s.TargetRegex != null
            ? Regex.IsMatch(path, $"^(?:{s.TargetRegex})$")
            : s.TargetModules.Any(t => path == t || path.EndsWith("." + t, StringComparison.Ordinal));

    /// <summary>
    /// PEFT's merge_and_unload: W += scale * B @ A (computed in fp32, rounded once to W's dtype), then each LoraLinear is
    /// replaced by its base layer, so the model is a plain one again. Returns the merged paths.
    /// </summary>
    public static IReadOnlyList<string> MergeAndUnload(nn.Module model)
    {
        var layers = Layers(model).ToList();
        using (no_grad())
        {
            foreach (var (path, layer) in layers)
            {
                // A quantized base becomes a plain fp32 Linear holding the merged weight (PEFT dequantizes to merge).
                var plain = layer.base_layer as Linear
                            ?? new Linear(layer.InFeatures, layer.OutFeatures, ((QuantizedLinear)layer.base_layer).bias is not null, ScalarType.Float32);
                using (var scope = NewDisposeScope())
                {
                    var merged = layer.BaseWeight(ScalarType.Float32) + layer.Delta().to(ScalarType.Float32);
                    // DoRA (PEFT's merge): the merged weight is rescaled per output row by m / ‖W + ΔW‖.
                    if (layer.lora_magnitude_vector is { } magnitude)
                        merged = merged * (magnitude.to(ScalarType.Float32) / layer.WeightNorm()).unsqueeze(1);
                    plain.weight.copy_(merged);
                    if (layer.base_layer is QuantizedLinear { bias: { } b }) plain.bias!.copy_(b);
                }
                var (parent, leaf) = ModuleTree.Parent(model, path);
                ModuleTree.ReplaceChild(parent, leaf, plain);
            }
        }
        return layers.Select(l => l.Name).ToList();
    }

    public static IEnumerable<(string Name, LoraLinear Layer)> Layers(nn.Module model) =>
        model.named_modules().Where(m => m.module is LoraLinear).Select(m => (m.name, (LoraLinear)m.module));

    /// <summary>
    /// Runs the model as its base until disposed (PEFT's <c>with model.disable_adapter():</c>), the reference of
    /// preference training without a second copy of the weights. Full copies of modules_to_save replace their module
    /// and keep no base to fall back on, so callers refuse them with a reference model.
    /// </summary>
    public static IDisposable Disable(nn.Module model)
    {
        var layers = Layers(model).Select(l => l.Layer).ToList();
        foreach (var l in layers) l.Disabled = true;
        return new Restore(() => { foreach (var l in layers) l.Disabled = false; });
    }

    sealed class Restore(Action undo) : IDisposable
    {
        public void Dispose() => undo();
    }

    /// <summary>Writes adapter_model.safetensors and adapter_config.json exactly as PEFT 0.10 lays them out.</summary>
    public static void Save(nn.Module model, LoraSettings settings, string dir, string baseModelNameOrPath)
    {
        Directory.CreateDirectory(dir);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, layer) in Layers(model))
        {
            tensors.Add(new(PeftPrefix + name + ".lora_A.weight", layer.lora_A.weight));
            tensors.Add(new(PeftPrefix + name + ".lora_B.weight", layer.lora_B.weight));
            if (layer.lora_magnitude_vector is { } m) tensors.Add(new(PeftPrefix + name + ".lora_magnitude_vector", m));
        }
        tensors.AddRange(ModulesToSaveTensors(model, settings).Select(t => new KeyValuePair<string, Tensor>(t.Key, t.Tensor)));
        SafetensorsFile.Write(Path.Combine(dir, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var wrappedLeaves = Layers(model).Select(l => l.Name.Split('.')[^1]).Distinct().ToList();
        var config = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(),
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = settings.LoftqBits is null ? true : "loftq",
            ["layer_replication"] = null,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = settings.LayersToTransform is { } layers ? new JsonArray(layers.Select(l => (JsonNode)JsonValue.Create(l)!).ToArray()) : null,
            ["loftq_config"] = settings.LoftqBits is int bits ? new JsonObject { ["loftq_bits"] = bits, ["loftq_iter"] = 1 } : new JsonObject(),
            ["lora_alpha"] = JsonNumber(settings.Alpha),
            ["lora_dropout"] = PythonFloat(settings.Dropout),
            ["megatron_config"] = null,
            ["megatron_core"] = "megatron.core",
            ["modules_to_save"] = settings.ModulesToSave.Count > 0 ? new JsonArray(settings.ModulesToSave.Select(m => (JsonNode)JsonValue.Create(m)!).ToArray()) : null,
            ["peft_type"] = "LORA",
            ["r"] = settings.Rank,
            ["rank_pattern"] = new JsonObject(),
            ["revision"] = null,
            ["target_modules"] = settings.TargetRegex != null
                ? JsonValue.Create(settings.TargetRegex)
                : new JsonArray(wrappedLeaves.Select(l => (JsonNode)JsonValue.Create(l)!).ToArray()),
            ["task_type"] = settings.TaskType,
            ["use_dora"] = settings.UseDora,
            ["use_rslora"] = settings.UseRsLora,
        };
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>A float as Python's json writes it (0.0, not 0), so the file reads back as a float there too.</summary>
    static JsonNode PythonFloat(double value)
    {
        var text = value.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        return JsonNode.Parse(text.Contains('.') || text.Contains('E') ? text : text + ".0")!;
    }

    static JsonNode JsonNumber(double value) => value == Math.Floor(value) && Math.Abs(value) < 1e9 ? JsonValue.Create((long)value) : JsonValue.Create(value);

    /// <summary>Reads a PEFT adapter_config.json; options we do not implement are refused by name.</summary>
    public static LoraSettings ReadSettings(string dir)
    {
        var path = Path.Combine(dir, ConfigFile);
        if (!Directory.Exists(dir)) throw new UserError($"lora_model_dir: folder '{dir}' does not exist.");
        if (!File.Exists(path)) throw new UserError($"lora_model_dir: '{dir}' has no {ConfigFile}; it is not a PEFT adapter folder.");
        var json = JsonFiles.ReadObject(path);
        var peftType = json["peft_type"]?.GetValue<string>();
        if (peftType != null && peftType != "LORA") throw new UserError($"{path}: peft_type {peftType} is not supported (LORA is).");
        void Refuse(string key, Func<JsonNode?, bool> isDefault)
        {
            if (!isDefault(json[key])) throw new UserError($"{path}: {key} = {json[key]?.ToJsonString()} is not supported yet.");
        }
        Refuse("fan_in_fan_out", n => n == null || !n.GetValue<bool>());
        Refuse("layers_pattern", n => n == null || (n is JsonArray a && a.Count == 0));
        Refuse("rank_pattern", n => n == null || (n is JsonObject o && o.Count == 0));
        Refuse("alpha_pattern", n => n == null || (n is JsonObject o && o.Count == 0));
        Refuse("bias", n => n == null || n.GetValue<string>() == "none");
        try
        {
            var targets = json["target_modules"];
            return new LoraSettings
            {
                Rank = json["r"]?.GetValue<int>() ?? 8,
                Alpha = json["lora_alpha"]?.GetValue<double>() ?? 8,
                Dropout = json["lora_dropout"]?.GetValue<double>() ?? 0,
                UseRsLora = json["use_rslora"]?.GetValue<bool>() ?? false,
                UseDora = json["use_dora"]?.GetValue<bool>() ?? false,
                TaskType = json["task_type"]?.GetValue<string>() ?? "CAUSAL_LM",
                ModulesToSave = json["modules_to_save"] is JsonArray save ? save.Select(x => x!.GetValue<string>()).ToList() : [],
                LayersToTransform = json["layers_to_transform"] switch
                {
                    null => null,
                    JsonArray list => list.Select(x => x!.GetValue<int>()).ToList(),
                    var single => [single.GetValue<int>()],
                },
                TargetModules = targets is JsonArray a ? a.Select(x => x!.GetValue<string>()).ToList() : [],
                TargetRegex = targets is JsonValue v ? v.GetValue<string>() : null,
                LoftqBits = json["init_lora_weights"] is JsonValue init && init.TryGetValue<string>(out var how) && how == "loftq"
                    ? json["loftq_config"]?["loftq_bits"]?.GetValue<int>() ?? 4 : null,
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new UserError($"{path}: a value has the wrong type ({e.Message}).");
        }
    }

    /// <summary>Wraps the model as the adapter folder says and loads its weights (PeftModel.from_pretrained).</summary>
    public static LoraSettings Load(nn.Module model, string dir)
    {
        var settings = ReadSettings(dir);
        // PEFT runs loftq_init again when it creates a LoftQ adapter's layers: the base becomes deq(Q(W)), then the saved
        // A and B are loaded over the fresh ones. A base already quantized (qlora) is those weights itself.
        if (settings.LoftqBits is int loftqBits) LoftQ.Prepare(model, settings, loftqBits, computeAdapter: false).Dispose();
        Apply(model, settings);
        var weightsPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(weightsPath))
            throw new UserError($"lora_model_dir: '{dir}' has no {WeightsFile} (adapter_model.bin is not read).");
        var file = SafetensorsFile.Open(weightsPath);
        var expected = new Dictionary<string, Tensor>();
        foreach (var (name, layer) in Layers(model))
        {
            expected[PeftPrefix + name + ".lora_A.weight"] = layer.lora_A.weight;
            expected[PeftPrefix + name + ".lora_B.weight"] = layer.lora_B.weight;
            if (layer.lora_magnitude_vector is { } m) expected[PeftPrefix + name + ".lora_magnitude_vector"] = m;
        }
        foreach (var (key, tensor) in ModulesToSaveTensors(model, settings)) expected[key] = tensor;
        var missing = expected.Keys.Where(k => !file.Entries.ContainsKey(k)).ToList();
        var unexpected = file.Entries.Keys.Where(k => !expected.ContainsKey(k)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
            throw new UserError($"{weightsPath}: adapter tensors do not fit the model: " +
                                $"{missing.Count} missing (e.g. {string.Join(", ", missing.Take(2))}), {unexpected.Count} unexpected (e.g. {string.Join(", ", unexpected.Take(2))}).");
        using var _ = no_grad();
        foreach (var (key, parameter) in expected)
        {
            using var loaded = file.Read(key);
            if (!loaded.shape.SequenceEqual(parameter.shape))
                throw new UserError($"{weightsPath}: '{key}' has shape [{string.Join(", ", loaded.shape)}], the model needs [{string.Join(", ", parameter.shape)}] (r = {settings.Rank}).");
            parameter.copy_(loaded);
        }
        return settings;
    }
}
