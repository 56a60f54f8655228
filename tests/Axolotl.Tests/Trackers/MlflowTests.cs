using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Training.Trackers;

namespace Axolotl.Tests.Trackers;

/// <summary>
/// MLflow: a file: store laid out as mlflow/store/tracking/file_store.py writes it, and a tracking server's REST API
/// (an in-process HttpListener standing in for it, checking each request's JSON).
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class MlflowTests
{
    [Theory]
    [InlineData(1.0, "1.0")]
    [InlineData(0.001, "0.001")]
    [InlineData(1e-5, "1e-05")]
    [InlineData(0.0001, "0.0001")]
    [InlineData(2.5e-7, "2.5e-07")]
    [InlineData(123.456, "123.456")]
    [InlineData(1e16, "1e+16")]
    [InlineData(1234567890123456.0, "1234567890123456.0")]
    [InlineData(-0.75, "-0.75")]
    public void Metric_values_are_written_as_python_repr(double value, string expected) =>
        Assert.Equal(expected, MlflowFileStore.MlflowValue(value));

    [Fact]
    public void Params_are_config_json_overlaid_with_the_config_as_python_str_flattened_on_request()
    {
        var yaml = "learning_rate: 0.0002\nbf16: auto\nlora_target_modules:\n- q_proj\n- v_proj\nhidden_size: 64\nspecial_tokens:\n  pad_token: <pad>\nseed: null\n";
        var json = """{"hidden_size": 32, "tie_word_embeddings": false, "rope_scaling": {"type": "linear", "factor": 2.0}}""";
        var p = MlflowCallback.Parameters(json, yaml, flatten: false).ToDictionary(x => x.Key, x => x.Value);
        Assert.Equal("64", p["hidden_size"]); // the run's arguments win over config.json
        Assert.Equal("False", p["tie_word_embeddings"]);
        Assert.Equal("{'type': 'linear', 'factor': 2.0}", p["rope_scaling"]);
        Assert.Equal("0.0002", p["learning_rate"]);
        Assert.Equal("auto", p["bf16"]);
        Assert.Equal("['q_proj', 'v_proj']", p["lora_target_modules"]);
        Assert.Equal("{'pad_token': '<pad>'}", p["special_tokens"]);
        Assert.Equal("None", p["seed"]);
        var flat = MlflowCallback.Parameters(json, yaml, flatten: true).ToDictionary(x => x.Key, x => x.Value);
        Assert.Equal("2.0", flat["rope_scaling.factor"]);
        Assert.Equal("<pad>", flat["special_tokens.pad_token"]);
    }

    [Fact]
    public void A_file_store_run_has_mlflows_layout_with_the_logged_metrics_params_tags_and_artifacts()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], TrackerData.Yaml(dir, $"""
            mlflow_tracking_uri: file:{dir["mlruns"]}
            mlflow_experiment_name: tiny-exp
            mlflow_run_name: run-one
            hf_mlflow_log_artifacts: true
            """));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));
        var history = TrackerData.History(dir);

        // The store's root as FileStore creates it: the Default experiment (id 0) and .trash, then ours.
        Assert.True(Directory.Exists(dir["mlruns/.trash"]));
        Assert.Contains("name: 'Default'", File.ReadAllText(dir["mlruns/0/meta.yaml"]));
        var experiment = Directory.GetDirectories(dir["mlruns"]).Single(d => File.Exists(Path.Combine(d, "meta.yaml")) && File.ReadAllText(Path.Combine(d, "meta.yaml")).Contains("name: 'tiny-exp'"));
        var id = Path.GetFileName(experiment);
        Assert.True(ulong.TryParse(id, out _));
        var expMeta = File.ReadAllLines(Path.Combine(experiment, "meta.yaml"));
        Assert.Equal(["artifact_location", "creation_time", "experiment_id", "last_update_time", "lifecycle_stage", "name"], expMeta.Select(l => l.Split(':')[0]));
        Assert.Contains($"experiment_id: '{id}'", expMeta);

        var run = Assert.Single(Directory.GetDirectories(experiment));
        var runId = Path.GetFileName(run);
        Assert.Matches("^[0-9a-f]{32}$", runId);
        var meta = File.ReadAllLines(Path.Combine(run, "meta.yaml")).ToDictionary(l => l[..l.IndexOf(':')], l => l[(l.IndexOf(':') + 2)..]);
        Assert.Equal("3", meta["status"]); // RunStatus.FINISHED
        Assert.Equal(runId, meta["run_id"]);
        Assert.Equal("'run-one'", meta["run_name"]);
        Assert.NotEqual("null", meta["end_time"]);
        Assert.Equal("run-one", File.ReadAllText(Path.Combine(run, "tags", "mlflow.runName")));

        // metrics/<key>: "timestamp value step" per logged value, in log order.
        var loss = File.ReadAllLines(Path.Combine(run, "metrics", "loss")).Select(l => l.Split(' ')).ToList();
        var logged = history.Where(h => h!["loss"] != null).ToList();
        Assert.Equal(logged.Select(h => (long)h!["step"]!), loss.Select(p => long.Parse(p[2])));
        Assert.Equal(logged.Select(h => (double)h!["loss"]!), loss.Select(p => double.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture)));
        Assert.All(loss, p => Assert.True(long.Parse(p[0]) > 1_600_000_000_000));
        Assert.Equal([2L, 4L], File.ReadAllLines(Path.Combine(run, "metrics", "eval_loss")).Select(l => long.Parse(l.Split(' ')[2])));
        Assert.False(File.Exists(Path.Combine(run, "metrics", "step")));

        Assert.Equal("0.01", File.ReadAllText(Path.Combine(run, "params", "learning_rate")));
        Assert.Contains("'type': 'alpaca'", File.ReadAllText(Path.Combine(run, "params", "datasets")));
        Assert.Equal("64", File.ReadAllText(Path.Combine(run, "params", "hidden_size"))); // from config.json

        // hf_mlflow_log_artifacts: the config file, each checkpoint, then output_dir's files.
        Assert.True(File.Exists(Path.Combine(run, "artifacts", "c.yml")));
        Assert.True(File.Exists(Path.Combine(run, "artifacts", "checkpoint-2", "trainer_state.json")));
        Assert.True(File.Exists(Path.Combine(run, "artifacts", "model.safetensors")));
    }

    /// <summary>A stand-in tracking server: records every request (method, path, JSON body) and answers as MLflow does.</summary>
    sealed class FakeServer : IDisposable
    {
        readonly HttpListener _listener = new();
        readonly Task _loop;
        public readonly List<(string Method, string Path, JsonObject? Body)> Requests = [];
        public readonly Dictionary<string, byte[]> Artifacts = [];
        public string Uri { get; }

        public FakeServer()
        {
            var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            int port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            Uri = $"http://127.0.0.1:{port}";
            _listener.Prefixes.Add(Uri + "/");
            _listener.Start();
            _loop = Task.Run(Serve);
        }

        async Task Serve()
        {
            while (_listener.IsListening)
            {
                HttpListenerContext ctx;
                try { ctx = await _listener.GetContextAsync(); } catch (Exception) { return; }
                var path = ctx.Request.Url!.PathAndQuery;
                using var body = new MemoryStream();
                ctx.Request.InputStream.CopyTo(body);
                JsonObject? json = null;
                if (ctx.Request.HttpMethod == "POST") json = JsonNode.Parse(body.ToArray())!.AsObject();
                lock (Requests) Requests.Add((ctx.Request.HttpMethod, path, json));
                (int status, string answer) = path switch
                {
                    _ when path.StartsWith("/api/2.0/mlflow/experiments/get-by-name") =>
                        (404, """{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Could not find experiment"}"""),
                    "/api/2.0/mlflow/experiments/create" => (200, """{"experiment_id": "7"}"""),
                    "/api/2.0/mlflow/runs/create" => (200, """{"run": {"info": {"run_id": "abc123", "experiment_id": "7", "artifact_uri": "mlflow-artifacts:/7/abc123/artifacts"}, "data": {}}}"""),
                    _ when path.StartsWith("/api/2.0/mlflow-artifacts/artifacts/") => (200, "{}"),
                    _ => (200, "{}"),
                };
                if (ctx.Request.HttpMethod == "PUT") lock (Artifacts) Artifacts[path] = body.ToArray();
                var bytes = Encoding.UTF8.GetBytes(answer);
                ctx.Response.StatusCode = status;
                ctx.Response.ContentType = "application/json";
                ctx.Response.OutputStream.Write(bytes);
                ctx.Response.Close();
            }
        }

        public void Dispose()
        {
            _listener.Stop();
            _listener.Close();
            try { _loop.Wait(5000); } catch (AggregateException) { }
        }
    }

    [Fact]
    public void A_tracking_server_gets_the_rest_calls_in_order_with_the_runs_json()
    {
        using var dir = TestSetup.TempDir();
        using var server = new FakeServer();
        File.WriteAllText(dir["c.yml"], TrackerData.Yaml(dir, $"""
            mlflow_tracking_uri: {server.Uri}
            mlflow_experiment_name: tiny exp
            mlflow_run_name: run-two
            hf_mlflow_log_artifacts: true
            """));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));
        var history = TrackerData.History(dir);
        List<(string Method, string Path, JsonObject? Body)> requests;
        lock (server.Requests) requests = [.. server.Requests];
        var api = requests.Where(r => r.Path.StartsWith("/api/2.0/mlflow/")).ToList();

        Assert.Equal(("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny%20exp"), (api[0].Method, api[0].Path));
        Assert.Equal("/api/2.0/mlflow/experiments/create", api[1].Path);
        Assert.Equal("tiny exp", (string)api[1].Body!["name"]!);
        Assert.Equal("/api/2.0/mlflow/runs/create", api[2].Path);
        Assert.Equal(("7", "run-two"), ((string)api[2].Body!["experiment_id"]!, (string)api[2].Body!["run_name"]!));
        Assert.Contains(api[2].Body!["tags"]!.AsArray(), t => (string)t!["key"]! == "mlflow.runName" && (string)t!["value"]! == "run-two");
        Assert.True((long)api[2].Body!["start_time"]! > 1_600_000_000_000);

        var batches = api.Where(r => r.Path == "/api/2.0/mlflow/runs/log-batch").Select(r => r.Body!).ToList();
        Assert.All(batches, b => Assert.Equal("abc123", (string)b["run_id"]!));
        var parameters = batches.Where(b => b["params"] != null).SelectMany(b => b["params"]!.AsArray()).ToDictionary(p => (string)p!["key"]!, p => (string)p!["value"]!);
        Assert.Equal("0.01", parameters["learning_rate"]);
        Assert.Equal("4", parameters["max_steps"]);
        Assert.All(batches.Where(b => b["params"] != null), b => Assert.True(b["params"]!.AsArray().Count <= 100));
        var metrics = batches.Where(b => b["metrics"] != null).SelectMany(b => b["metrics"]!.AsArray()).Select(m => m!.AsObject()).ToList();
        var losses = metrics.Where(m => (string)m["key"]! == "loss").ToList();
        var logged = history.Where(h => h!["loss"] != null).ToList();
        Assert.Equal(logged.Select(h => (double)h!["loss"]!), losses.Select(m => (double)m["value"]!));
        Assert.Equal(logged.Select(h => (long)h!["step"]!), losses.Select(m => (long)m["step"]!));
        Assert.DoesNotContain(metrics, m => (string)m["key"]! == "step");
        Assert.Contains(metrics, m => (string)m["key"]! == "eval_loss" && (long)m["step"]! == 4);

        var update = api.Last();
        Assert.Equal("/api/2.0/mlflow/runs/update", update.Path);
        Assert.Equal(("abc123", "FINISHED"), ((string)update.Body!["run_id"]!, (string)update.Body!["status"]!));
        Assert.True((long)update.Body!["end_time"]! >= (long)api[2].Body!["start_time"]!);

        // Artifacts go through the server's mlflow-artifacts proxy under the run's artifact path.
        lock (server.Artifacts)
        {
            Assert.Equal(File.ReadAllBytes(dir["c.yml"]), server.Artifacts["/api/2.0/mlflow-artifacts/artifacts/7/abc123/artifacts/c.yml"]);
            Assert.Contains("/api/2.0/mlflow-artifacts/artifacts/7/abc123/artifacts/checkpoint-2/trainer_state.json", server.Artifacts.Keys);
        }
    }

    [Fact]
    public void An_experiment_name_turns_mlflow_on_and_an_unsupported_store_is_one_sentence()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], TrackerData.Yaml(dir, "mlflow_experiment_name: e"));
        Assert.True(ConfigLoader.Load(dir["c.yml"]).UseMlflow);
        File.WriteAllText(dir["d.yml"], TrackerData.Yaml(dir, "mlflow_tracking_uri: file:/x"));
        Assert.Null(ConfigLoader.Load(dir["d.yml"]).UseMlflow); // as Axolotl: the URI alone does not turn it on
        var e = Assert.Throws<UserError>(() => MlflowRunOptions.Store("sqlite:///mlflow.db"));
        Assert.Contains("databases and Databricks are not", e.Message);
    }
}
