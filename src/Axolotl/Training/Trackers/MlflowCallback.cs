using System.Globalization;
using System.Text.Json.Nodes;
using YamlDotNet.RepresentationModel;

namespace Axolotl.Training.Trackers;

/// <summary>
/// transformers' MLflowCallback with Axolotl's settings: at train begin the experiment (mlflow_experiment_name, created
/// when missing) gets a run named mlflow_run_name (else output_dir), tagged mlflow.runName, mlflow.user,
/// mlflow.source.name and mlflow.source.type, and the parameters: the model's config.json overlaid with the resolved
/// Axolotl config (the arguments of the run), each value as Python's str() would show it, nested keys flattened with
/// "." when MLFLOW_FLATTEN_PARAMS is true, values over MLflow's 6000 characters dropped. Every log entry's numbers are
/// logged as metrics at the entry's step (the step itself is not a metric). With hf_mlflow_log_artifacts the config
/// file at train begin (Axolotl's SaveAxolotlConfigtoMlflowCallback), each checkpoint's files on save and output_dir's
/// files at the end go to the run's artifacts. The run ends FINISHED (or KILLED when training is interrupted).
/// </summary>
internal sealed class MlflowCallback(IMlflowStore store, MlflowRunOptions options, Action<string>? warn = null) : ITrainerCallback, IDisposable
{
    /// <summary>mlflow.utils.validation.MAX_PARAM_VAL_LENGTH.</summary>
    const int MaxParamLength = 6000;

    string? _runId;
    bool _ended;

    public string? RunId => _runId;

    public void OnTrainBegin(TrainerContext c)
    {
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var experiment = store.Experiment(options.ExperimentName);
        var user = Environment.UserName;
        _runId = store.CreateRun(experiment, options.RunName, user, now,
            [("mlflow.runName", options.RunName), ("mlflow.user", user), ("mlflow.source.name", "axolotl"), ("mlflow.source.type", "LOCAL")]);
        var parameters = Parameters(options.ModelConfigJson, options.ConfigYaml, options.Flatten);
        foreach (var (key, value) in parameters.Where(p => p.Value.Length > MaxParamLength))
            warn?.Invoke($"MLflow: parameter '{key}' ({value.Length} characters) is longer than MLflow takes ({MaxParamLength}); not logged (MLFLOW_FLATTEN_PARAMS=true splits nested values).");
        store.LogBatch(_runId, [], parameters.Where(p => p.Value.Length <= MaxParamLength).ToList());
        if (options.LogArtifacts && options.ConfigFile is { } config && File.Exists(config))
            store.LogArtifact(_runId, config, Path.GetFileName(config));
    }

    public void OnLog(TrainerContext c, JsonObject entry)
    {
        if (_runId is null) return;
        long step = entry["step"] is JsonNode s ? (long)LossCurve.Number(s) : c.Step;
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var metrics = entry.Where(kv => kv.Key != "step" && kv.Value is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number)
            .Select(kv => new MlflowMetric(kv.Key, LossCurve.Number(kv.Value!), now, step)).ToList();
        if (metrics.Count > 0) Safely(() => store.LogBatch(_runId, metrics, []));
    }

    public void OnSave(TrainerContext c, string checkpoint)
    {
        if (_runId is null || !options.LogArtifacts) return;
        Safely(() => LogFolder(checkpoint, Path.GetFileName(checkpoint)));
    }

    /// <summary>Once the run's outputs are written: output_dir's files to the artifacts (hf_mlflow_log_artifacts), then
    /// the run ends FINISHED, as MLflowCallback's on_train_end.</summary>
    public void Finish(string outputDir)
    {
        if (_runId is null) return;
        if (options.LogArtifacts)
            Safely(() =>
            {
                foreach (var file in Directory.GetFiles(outputDir))
                    store.LogArtifact(_runId, file, Path.GetFileName(file));
            });
        End("FINISHED");
    }

    void LogFolder(string dir, string prefix)
    {
        foreach (var file in Directory.GetFiles(dir, "*", SearchOption.AllDirectories))
            store.LogArtifact(_runId!, file, prefix + "/" + Path.GetRelativePath(dir, file).Replace(Path.DirectorySeparatorChar, '/'));
    }

    void End(string status)
    {
        if (_ended || _runId is null) return;
        _ended = true;
        Safely(() => store.EndRun(_runId, status, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()));
    }

    /// <summary>A tracker that fails mid-run warns instead of stopping the training it records.</summary>
    void Safely(Action action)
    {
        try { action(); }
        catch (Exception e) when (e is UserError or IOException or HttpRequestException or TaskCanceledException)
        {
            warn?.Invoke($"MLflow: {e.Message}");
        }
    }

    /// <summary>A run that did not reach OnTrainEnd (interrupted or failed) ends KILLED.</summary>
    public void Dispose()
    {
        End("KILLED");
        (store as IDisposable)?.Dispose();
    }

    /// <summary>{**config.json, **resolved config} as (key, str(value)) pairs, flattened with "." when asked.</summary>
    public static List<(string Key, string Value)> Parameters(string? modelConfigJson, string configYaml, bool flatten)
    {
        var merged = new List<(string Key, object? Value)>();
        void Put(string key, object? value)
        {
            int i = merged.FindIndex(p => p.Key == key);
            if (i >= 0) merged[i] = (key, value); else merged.Add((key, value));
        }
        if (modelConfigJson != null && JsonNode.Parse(modelConfigJson) is JsonObject model)
            foreach (var (k, v) in model) Put(k, FromJson(v));
        var yaml = new YamlStream();
        yaml.Load(new StringReader(configYaml));
        if (yaml.Documents.Count > 0 && yaml.Documents[0].RootNode is YamlMappingNode root)
            foreach (var (k, v) in root.Children) Put(((YamlScalarNode)k).Value!, FromYaml(v));
        var result = new List<(string, string)>();
        foreach (var (key, value) in merged)
        {
            if (flatten && value is List<(string Key, object? Value)> nested)
                foreach (var (k, v) in Flatten(key, nested)) result.Add((k, PythonStr(v)));
            else result.Add((key, PythonStr(value)));
        }
        return result;
    }

    static IEnumerable<(string, object?)> Flatten(string prefix, List<(string Key, object? Value)> map)
    {
        foreach (var (k, v) in map)
        {
            if (v is List<(string Key, object? Value)> nested) foreach (var x in Flatten($"{prefix}.{k}", nested)) yield return x;
            else yield return ($"{prefix}.{k}", v);
        }
    }

    /// <summary>Mappings are (key, value) lists, sequences object lists, scalars typed as Python would load them.</summary>
    static object? FromJson(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => o.Select(kv => (kv.Key, FromJson(kv.Value))).ToList(),
        JsonArray a => a.Select(FromJson).ToList(),
        JsonValue v when v.GetValueKind() == System.Text.Json.JsonValueKind.String => v.GetValue<string>(),
        JsonValue v when v.GetValueKind() is System.Text.Json.JsonValueKind.True or System.Text.Json.JsonValueKind.False => v.GetValue<bool>(),
        // An integer as JSON writes it stays an int for Python (64, not 64.0).
        JsonValue v => long.TryParse(v.ToJsonString(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l) ? (object)l : LossCurve.Number(v),
    };

    static object? FromYaml(YamlNode node) => node switch
    {
        YamlMappingNode m => m.Children.Select(kv => (((YamlScalarNode)kv.Key).Value!, FromYaml(kv.Value))).ToList(),
        YamlSequenceNode s => s.Children.Select(FromYaml).ToList(),
        YamlScalarNode { Style: YamlDotNet.Core.ScalarStyle.SingleQuoted or YamlDotNet.Core.ScalarStyle.DoubleQuoted } q => q.Value,
        YamlScalarNode p => p.Value switch
        {
            null or "" or "~" or "null" => null,
            "true" or "True" => true,
            "false" or "False" => false,
            var text when long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) => l,
            var text when double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
            var text => text,
        },
        _ => null,
    };

    /// <summary>Python's str() of a loaded value: None, True, 1, 0.0002, 'text' inside containers, {'k': v}, [a, b].</summary>
    public static string PythonStr(object? value, bool inside = false) => value switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => MlflowFileStore.MlflowValue(d),
        string s => inside ? "'" + s.Replace("\\", "\\\\").Replace("'", "\\'") + "'" : s,
        List<(string Key, object? Value)> map => "{" + string.Join(", ", map.Select(kv => $"'{kv.Key}': {PythonStr(kv.Value, true)}")) + "}",
        List<object?> list => "[" + string.Join(", ", list.Select(x => PythonStr(x, true))) + "]",
        _ => value.ToString() ?? "",
    };
}

/// <summary>The run's identity and what it logs.</summary>
internal sealed record MlflowRunOptions
{
    public string? ExperimentName { get; init; }
    public required string RunName { get; init; }
    /// <summary>The resolved Axolotl config as YAML (the run's arguments).</summary>
    public required string ConfigYaml { get; init; }
    /// <summary>config.json of the model, whose values the config's own keys override.</summary>
    public string? ModelConfigJson { get; init; }
    /// <summary>MLFLOW_FLATTEN_PARAMS.</summary>
    public bool Flatten { get; init; }
    /// <summary>hf_mlflow_log_artifacts.</summary>
    public bool LogArtifacts { get; init; }
    /// <summary>The config file logged as an artifact at train begin.</summary>
    public string? ConfigFile { get; init; }

    /// <summary>The store of mlflow_tracking_uri: http(s) → a tracking server; file: or a path → a file store; unset →
    /// MLFLOW_TRACKING_URI, else ./mlruns, as MLflow's client defaults.</summary>
    public static IMlflowStore Store(string? trackingUri)
    {
        var uri = trackingUri ?? Environment.GetEnvironmentVariable("MLFLOW_TRACKING_URI") ?? "mlruns";
        if (uri.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || uri.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            return new MlflowRestStore(uri);
        if (uri.Contains("://") && !uri.StartsWith("file:", StringComparison.Ordinal))
            throw new UserError($"mlflow_tracking_uri '{uri}': only http(s) tracking servers and file: stores (or plain paths) are supported; databases and Databricks are not.");
        return new MlflowFileStore(MlflowFileStore.PathOf(uri));
    }
}
