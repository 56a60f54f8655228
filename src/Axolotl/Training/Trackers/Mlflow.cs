using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Axolotl.IO;

namespace Axolotl.Training.Trackers;

internal sealed record MlflowMetric(string Key, double Value, long Timestamp, long Step);

/// <summary>Where an MLflow run goes: a tracking server (REST API) or a local file store (<c>mlruns</c>).</summary>
internal interface IMlflowStore
{
    /// <summary>The id of the experiment of this name, created when missing (null: the Default experiment, id 0).</summary>
    string Experiment(string? name);
    /// <summary>Starts a run; returns its id.</summary>
    string CreateRun(string experimentId, string runName, string user, long startTime, IReadOnlyList<(string Key, string Value)> tags);
    void LogBatch(string runId, IReadOnlyList<MlflowMetric> metrics, IReadOnlyList<(string Key, string Value)> parameters);
    /// <summary>Copies a file into the run's artifacts at <paramref name="artifactPath"/> (a relative, '/'-separated path).</summary>
    void LogArtifact(string runId, string file, string artifactPath);
    /// <summary>Ends the run (FINISHED, FAILED or KILLED).</summary>
    void EndRun(string runId, string status, long endTime);
}

/// <summary>
/// MLflow's FileStore layout (mlflow/store/tracking/file_store.py), which <c>mlflow ui --backend-store-uri DIR</c> reads:
/// <c>ROOT/&lt;experiment_id&gt;/meta.yaml</c>, <c>ROOT/&lt;experiment_id&gt;/&lt;run_id&gt;/meta.yaml</c>, and under the run
/// <c>metrics/&lt;key&gt;</c> (lines "timestamp value step", appended), <c>params/&lt;key&gt;</c> and <c>tags/&lt;key&gt;</c> (the
/// value as the whole file), <c>artifacts/</c>. A missing root gets the Default experiment (id 0) and <c>.trash</c>, as
/// the FileStore creates them.
/// </summary>
internal sealed class MlflowFileStore : IMlflowStore
{
    readonly string _root;

    public MlflowFileStore(string root)
    {
        _root = Path.GetFullPath(root);
        if (!Directory.Exists(_root))
        {
            Directory.CreateDirectory(_root);
            CreateExperiment("0", "Default");
        }
        Directory.CreateDirectory(Path.Combine(_root, ".trash"));
    }

    public string Root => _root;

    /// <summary>A file: URI or a plain path, as MLflow's local_file_uri_to_path reads it.</summary>
    public static string PathOf(string uri) =>
        uri.StartsWith("file:", StringComparison.Ordinal) ? new Uri(uri.StartsWith("file://", StringComparison.Ordinal) ? uri : "file://" + uri["file:".Length..]).LocalPath : uri;

    static string FileUri(string path) => new Uri(Path.GetFullPath(path)).AbsoluteUri;

    public string Experiment(string? name)
    {
        name ??= "Default";
        foreach (var dir in Directory.GetDirectories(_root))
        {
            var meta = Path.Combine(dir, "meta.yaml");
            if (!File.Exists(meta)) continue;
            var fields = ReadYaml(meta);
            if (fields.GetValueOrDefault("name") == name && fields.GetValueOrDefault("lifecycle_stage") != "deleted")
                return fields["experiment_id"];
        }
        if (name == "Default" && !Directory.Exists(Path.Combine(_root, "0"))) return CreateExperiment("0", name);
        // MLflow's _generate_unique_integer_id: a random positive 63-bit integer (from a uuid), as a string.
        return CreateExperiment(((ulong)Random.Shared.NextInt64(1, long.MaxValue)).ToString(CultureInfo.InvariantCulture), name);
    }

    string CreateExperiment(string id, string name)
    {
        var dir = Path.Combine(_root, id);
        Directory.CreateDirectory(dir);
        long now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        WriteYaml(Path.Combine(dir, "meta.yaml"), [
            ("artifact_location", Quote(FileUri(dir))), ("creation_time", now.ToString(CultureInfo.InvariantCulture)),
            ("experiment_id", Quote(id)), ("last_update_time", now.ToString(CultureInfo.InvariantCulture)),
            ("lifecycle_stage", "active"), ("name", Quote(name))]);
        return id;
    }

    string RunDir(string runId) =>
        Directory.GetDirectories(_root).Select(e => Path.Combine(e, runId)).FirstOrDefault(Directory.Exists)
        ?? throw new InvalidOperationException($"MLflow run {runId} is not in {_root}");

    public string CreateRun(string experimentId, string runName, string user, long startTime, IReadOnlyList<(string Key, string Value)> tags)
    {
        var runId = Guid.NewGuid().ToString("N");
        var dir = Path.Combine(_root, experimentId, runId);
        Directory.CreateDirectory(dir);
        foreach (var sub in new[] { "metrics", "params", "artifacts", "tags" }) Directory.CreateDirectory(Path.Combine(dir, sub));
        WriteRunMeta(dir, experimentId, runId, runName, user, startTime, status: 1, endTime: null);
        foreach (var (key, value) in tags) AtomicFile.WriteAllText(Safe(dir, "tags", key), value);
        return runId;
    }

    /// <summary>The run's meta.yaml as _make_persisted_run_info_dict writes it (status as RunStatus's number: RUNNING 1,
    /// FINISHED 3, FAILED 4, KILLED 5; source_type LOCAL 4), keys sorted as PyYAML dumps them.</summary>
    static void WriteRunMeta(string dir, string experimentId, string runId, string runName, string user, long startTime, int status, long? endTime) =>
        WriteYaml(Path.Combine(dir, "meta.yaml"), [
            ("artifact_uri", Quote(FileUri(Path.Combine(dir, "artifacts")))), ("deleted_time", "null"),
            ("end_time", endTime?.ToString(CultureInfo.InvariantCulture) ?? "null"), ("entry_point_name", "''"),
            ("experiment_id", Quote(experimentId)), ("lifecycle_stage", "active"), ("run_id", runId), ("run_name", Quote(runName)),
            ("run_uuid", runId), ("source_name", "''"), ("source_type", "4"), ("source_version", "''"),
            ("start_time", startTime.ToString(CultureInfo.InvariantCulture)), ("status", status.ToString(CultureInfo.InvariantCulture)),
            ("tags", "[]"), ("user_id", Quote(user))]);

    public void LogBatch(string runId, IReadOnlyList<MlflowMetric> metrics, IReadOnlyList<(string Key, string Value)> parameters)
    {
        var dir = RunDir(runId);
        foreach (var m in metrics)
            File.AppendAllText(Safe(dir, "metrics", m.Key), $"{m.Timestamp} {MlflowValue(m.Value)} {m.Step}\n");
        foreach (var (key, value) in parameters) AtomicFile.WriteAllText(Safe(dir, "params", key), value);
    }

    public void LogArtifact(string runId, string file, string artifactPath)
    {
        var target = Safe(RunDir(runId), "artifacts", artifactPath);
        File.Copy(file, target, overwrite: true);
    }

    public void EndRun(string runId, string status, long endTime)
    {
        var dir = RunDir(runId);
        var meta = ReadYaml(Path.Combine(dir, "meta.yaml"));
        WriteRunMeta(dir, meta["experiment_id"], runId, meta["run_name"], meta["user_id"], long.Parse(meta["start_time"], CultureInfo.InvariantCulture),
            status switch { "FINISHED" => 3, "FAILED" => 4, "KILLED" => 5, _ => 1 }, endTime);
    }

    /// <summary>A key as a path under the run's folder ('/' makes folders, as in MLflow); no way out of it.</summary>
    static string Safe(string runDir, string folder, string key)
    {
        var baseDir = Path.GetFullPath(Path.Combine(runDir, folder));
        var path = Path.GetFullPath(Path.Combine(baseDir, key));
        if (!path.StartsWith(baseDir + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new UserError($"MLflow key '{key}' would leave the run's {folder} folder.");
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        return path;
    }

    /// <summary>Python's repr of a float, as MLflow writes a metric's value: the shortest round-trip digits, in fixed
    /// notation for exponents -4 to 15 (with at least one decimal: 1.0) and d.ddde±XX outside (1e-05, 1.5e+16).</summary>
    public static string MlflowValue(double v)
    {
        if (double.IsNaN(v)) return "nan";
        if (double.IsInfinity(v)) return v > 0 ? "inf" : "-inf";
        if (v == 0) return double.IsNegative(v) ? "-0.0" : "0.0";
        var e = Math.Abs(v).ToString("E16", CultureInfo.InvariantCulture);
        // The shortest digits that round-trip, and the decimal exponent of the first one.
        var shortest = Math.Abs(v).ToString("R", CultureInfo.InvariantCulture);
        int exponent = int.Parse(e[(e.IndexOf('E') + 1)..], CultureInfo.InvariantCulture);
        var mantissa = shortest.Contains('E') ? shortest[..shortest.IndexOf('E')] : shortest;
        var digits = mantissa.Replace(".", "").TrimStart('0').TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        string body;
        if (exponent is >= -4 and < 16)
        {
            if (exponent >= 0)
            {
                var whole = digits.Length > exponent + 1 ? digits[..(exponent + 1)] : digits.PadRight(exponent + 1, '0');
                var fraction = digits.Length > exponent + 1 ? digits[(exponent + 1)..] : "0";
                body = whole + "." + fraction;
            }
            else body = "0." + new string('0', -exponent - 1) + digits;
        }
        else body = (digits.Length > 1 ? digits[0] + "." + digits[1..] : digits) + $"e{(exponent < 0 ? "-" : "+")}{Math.Abs(exponent):00}";
        return (v < 0 ? "-" : "") + body;
    }

    static string Quote(string s) => "'" + s.Replace("'", "''") + "'";

    static void WriteYaml(string path, IEnumerable<(string Key, string Value)> fields) =>
        AtomicFile.WriteAllText(path, string.Concat(fields.Select(f => $"{f.Key}: {f.Value}\n")));

    /// <summary>The flat key: value lines this store writes (single-quoted strings unquoted).</summary>
    static Dictionary<string, string> ReadYaml(string path)
    {
        var fields = new Dictionary<string, string>();
        foreach (var line in File.ReadAllLines(path))
        {
            int colon = line.IndexOf(": ", StringComparison.Ordinal);
            if (colon < 0) continue;
            var value = line[(colon + 2)..];
            if (value.Length >= 2 && value[0] == '\'' && value[^1] == '\'') value = value[1..^1].Replace("''", "'");
            fields[line[..colon]] = value;
        }
        return fields;
    }
}

/// <summary>
/// A tracking server through MLflow's REST API 2.0: experiments/get-by-name (then experiments/create when it answers
/// RESOURCE_DOES_NOT_EXIST), runs/create, runs/log-batch, runs/update; artifacts through the server's
/// mlflow-artifacts proxy when the run's artifact_uri is mlflow-artifacts:. MLFLOW_TRACKING_TOKEN (bearer) or
/// MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (basic) authenticate, as MLflow's client reads them.
/// </summary>
internal sealed class MlflowRestStore : IMlflowStore, IDisposable
{
    readonly HttpClient _http;
    readonly string _base;
    readonly Dictionary<string, string> _artifactUris = [];

    public MlflowRestStore(string trackingUri, HttpMessageHandler? handler = null)
    {
        _base = trackingUri.TrimEnd('/');
        _http = handler is null ? new HttpClient() : new HttpClient(handler);
        _http.Timeout = TimeSpan.FromSeconds(120);
        if (Environment.GetEnvironmentVariable("MLFLOW_TRACKING_TOKEN") is { Length: > 0 } token)
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        else if (Environment.GetEnvironmentVariable("MLFLOW_TRACKING_USERNAME") is { Length: > 0 } user)
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic",
                Convert.ToBase64String(Encoding.UTF8.GetBytes($"{user}:{Environment.GetEnvironmentVariable("MLFLOW_TRACKING_PASSWORD")}")));
    }

    JsonObject Send(HttpMethod method, string api, JsonObject? body, bool missingIsNull = false)
    {
        using var request = new HttpRequestMessage(method, $"{_base}/api/2.0/mlflow/{api}");
        if (body != null) request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        HttpResponseMessage response;
        try { response = _http.Send(request); }
        catch (HttpRequestException e) { throw new UserError($"mlflow_tracking_uri {_base}: the tracking server cannot be reached ({e.Message})."); }
        using (response)
        {
            var text = new StreamReader(response.Content.ReadAsStream()).ReadToEnd();
            JsonObject? json = null;
            try { json = text.Length > 0 ? JsonNode.Parse(text) as JsonObject : null; } catch (System.Text.Json.JsonException) { }
            if (response.IsSuccessStatusCode) return json ?? [];
            if (missingIsNull && (string?)json?["error_code"] == "RESOURCE_DOES_NOT_EXIST") return null!;
            throw new UserError($"mlflow_tracking_uri {_base}: {api} answered {(int)response.StatusCode} {json?["message"] ?? text.Trim()}.");
        }
    }

    public string Experiment(string? name)
    {
        if (name is null) return "0";
        var found = Send(HttpMethod.Get, "experiments/get-by-name?experiment_name=" + Uri.EscapeDataString(name), null, missingIsNull: true);
        if (found?["experiment"]?["experiment_id"] is JsonNode id) return (string)id!;
        return (string)Send(HttpMethod.Post, "experiments/create", new JsonObject { ["name"] = name })["experiment_id"]!;
    }

    public string CreateRun(string experimentId, string runName, string user, long startTime, IReadOnlyList<(string Key, string Value)> tags)
    {
        var run = Send(HttpMethod.Post, "runs/create", new JsonObject
        {
            ["experiment_id"] = experimentId, ["user_id"] = user, ["start_time"] = startTime, ["run_name"] = runName,
            ["tags"] = new JsonArray(tags.Select(t => (JsonNode)new JsonObject { ["key"] = t.Key, ["value"] = t.Value }).ToArray()),
        });
        var info = run["run"]!["info"]!;
        var runId = (string)info["run_id"]!;
        _artifactUris[runId] = (string?)info["artifact_uri"] ?? "";
        return runId;
    }

    /// <summary>MLflow's log-batch limits: 1000 metrics and 100 params per request.</summary>
    public void LogBatch(string runId, IReadOnlyList<MlflowMetric> metrics, IReadOnlyList<(string Key, string Value)> parameters)
    {
        foreach (var chunk in parameters.Chunk(100))
            Send(HttpMethod.Post, "runs/log-batch", new JsonObject
            {
                ["run_id"] = runId,
                ["params"] = new JsonArray(chunk.Select(p => (JsonNode)new JsonObject { ["key"] = p.Key, ["value"] = p.Value }).ToArray()),
            });
        foreach (var chunk in metrics.Chunk(1000))
            Send(HttpMethod.Post, "runs/log-batch", new JsonObject
            {
                ["run_id"] = runId,
                ["metrics"] = new JsonArray(chunk.Select(m => (JsonNode)new JsonObject
                    { ["key"] = m.Key, ["value"] = m.Value, ["timestamp"] = m.Timestamp, ["step"] = m.Step }).ToArray()),
            });
    }

    public void LogArtifact(string runId, string file, string artifactPath)
    {
        const string proxy = "mlflow-artifacts:";
        var uri = _artifactUris.GetValueOrDefault(runId, "");
        if (!uri.StartsWith(proxy, StringComparison.Ordinal))
            throw new UserError($"mlflow_tracking_uri {_base}: the run's artifact store '{uri}' is not served by the tracking server (start it with --serve-artifacts), so hf_mlflow_log_artifacts cannot upload.");
        var path = uri[proxy.Length..].TrimStart('/').TrimEnd('/') + "/" + artifactPath;
        using var request = new HttpRequestMessage(HttpMethod.Put, $"{_base}/api/2.0/mlflow-artifacts/artifacts/{string.Join('/', path.Split('/').Select(Uri.EscapeDataString))}")
        { Content = new StreamContent(File.OpenRead(file)) };
        using var response = _http.Send(request);
        if (!response.IsSuccessStatusCode)
            throw new UserError($"mlflow_tracking_uri {_base}: uploading artifact {artifactPath} answered {(int)response.StatusCode}.");
    }

    public void EndRun(string runId, string status, long endTime) =>
        Send(HttpMethod.Post, "runs/update", new JsonObject { ["run_id"] = runId, ["status"] = status, ["end_time"] = endTime });

    public void Dispose() => _http.Dispose();
}
