using System.Net;
using System.Net.Sockets;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using Axolotl.Training.Trackers;
using static TorchSharp.torch;

namespace Axolotl.Tests.Trackers;

/// <summary>use_otel_metrics: the Prometheus endpoint serves Axolotl's metric names during and after a short run.</summary>
[Collection(GlobalTorchRng.Name)]
public class OpenTelemetryTests
{
    static int FreePort()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        int port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        return port;
    }

    /// <summary>Scrapes the endpoint during training, at the end of step 2.</summary>
    sealed class Scraper(string endpoint) : ITrainerCallback
    {
        public string? During;
        public void OnStepEnd(TrainerContext c)
        {
            if (c.Step != 2) return;
            using var http = new HttpClient();
            During = http.GetStringAsync(endpoint).GetAwaiter().GetResult();
        }
    }

    [Fact]
    public void A_short_run_exposes_axolotls_metrics_in_prometheus_format()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var model = CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), ScalarType.Float32, ScalarType.Float32);
        var rng = new Random(5);
        Example Row() { var ids = Enumerable.Range(0, 12).Select(_ => rng.Next(3, 500)).ToArray(); return new Example(ids, ids); }
        var train = Enumerable.Range(0, 6).Select(_ => Row()).ToList();
        var eval = Enumerable.Range(0, 2).Select(_ => Row()).ToList();
        using var otel = new OpenTelemetryCallback("127.0.0.1", FreePort());
        var scraper = new Scraper(otel.Endpoint);
        var trainer = new Trainer(model, new TrainingOptions { MaxSteps = 3, LearningRate = 1e-3, WarmupSteps = 0, LoggingSteps = 1, EvalSteps = 3 });
        trainer.Callbacks.Add(otel);
        trainer.Callbacks.Add(scraper);
        trainer.Train(train, eval: eval);

        Assert.NotNull(scraper.During);
        Assert.Contains("axolotl_train_loss", scraper.During);
        using var http = new HttpClient();
        var after = http.GetStringAsync(otel.Endpoint).GetAwaiter().GetResult();
        foreach (var name in new[] { "axolotl_train_loss", "axolotl_eval_loss", "axolotl_learning_rate", "axolotl_epoch", "axolotl_global_steps", "axolotl_gradient_norm", "axolotl_eval_perplexity" })
            Assert.Contains(after.Split('\n'), l => l.StartsWith("# TYPE " + name, StringComparison.Ordinal));
        // The counter counted the three steps; the loss gauge holds the last logged loss.
        var steps = after.Split('\n').Single(l => l.StartsWith("axolotl_global_steps", StringComparison.Ordinal) && !l.StartsWith("# "));
        Assert.Equal(3.0, double.Parse(steps.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture));
        var loss = after.Split('\n').Single(l => l.StartsWith("axolotl_train_loss", StringComparison.Ordinal));
        double last = (double)trainer.State.LogHistory.Last(h => h["loss"] != null)["loss"]!;
        Assert.Equal(last, double.Parse(loss.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture), 5);
    }

    [Fact]
    public void The_opentelemetry_example_loads_with_its_host_and_port()
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", "llama-3__opentelemetry-qlora.yml"));
        Assert.Equal((true, "localhost", 8000), (c.UseOtelMetrics, c.OtelMetricsHost, c.OtelMetricsPort));
    }
}
