using System.Diagnostics.Metrics;
using System.Text.Json.Nodes;
using OpenTelemetry;
using OpenTelemetry.Metrics;

namespace Axolotl.Training.Trackers;

/// <summary>
/// Axolotl's OpenTelemetryMetricsCallback (use_otel_metrics): a meter "axolotl.training" whose instruments the
/// OpenTelemetry SDK serves in Prometheus' text format at http://otel_metrics_host:otel_metrics_port/metrics from train
/// begin until the callback is disposed. Gauges axolotl_train_loss, axolotl_eval_loss, axolotl_learning_rate,
/// axolotl_epoch, axolotl_gradient_norm, axolotl_memory_usage (MB, set when a log carries memory_usage) and one
/// axolotl_eval_* gauge per numeric eval metric; the counter axolotl_global_steps adds one per step. The exporter names
/// them as the OpenTelemetry-to-Prometheus rules say (a unit suffix, _ratio for unit "1" gauges, _total for counters).
/// </summary>
internal sealed class OpenTelemetryCallback : ITrainerCallback, IDisposable
{
    public const string MeterName = "axolotl.training";
    readonly Meter _meter = new(MeterName);
    readonly MeterProvider _provider;
    readonly Gauge<double> _trainLoss, _evalLoss, _learningRate, _epoch, _gradNorm, _memory;
    readonly Counter<long> _steps;
    readonly Dictionary<string, Gauge<double>> _evalGauges = [];

    public OpenTelemetryCallback(string host, int port)
    {
        Endpoint = $"http://{host}:{port}/metrics";
        _trainLoss = _meter.CreateGauge<double>("axolotl_train_loss", "1", "Current training loss");
        _evalLoss = _meter.CreateGauge<double>("axolotl_eval_loss", "1", "Current evaluation loss");
        _learningRate = _meter.CreateGauge<double>("axolotl_learning_rate", "1", "Current learning rate");
        _epoch = _meter.CreateGauge<double>("axolotl_epoch", "1", "Current training epoch");
        _steps = _meter.CreateCounter<long>("axolotl_global_steps", "1", "Total training steps completed");
        _gradNorm = _meter.CreateGauge<double>("axolotl_gradient_norm", "1", "Gradient norm");
        _memory = _meter.CreateGauge<double>("axolotl_memory_usage", "MB", "Current memory usage in MB");
        try
        {
            _provider = Sdk.CreateMeterProviderBuilder()
                .AddMeter(MeterName)
                .AddPrometheusHttpListener(o => { o.Host = host; o.Port = port; o.ScrapeResponseCacheDurationMilliseconds = 0; })
                .Build()!;
        }
        catch (Exception e) when (e is System.Net.HttpListenerException or InvalidOperationException)
        {
            _meter.Dispose();
            throw new UserError($"use_otel_metrics: cannot serve metrics at http://{host}:{port}/ ({e.Message}); change otel_metrics_port or otel_metrics_host.");
        }
    }

    /// <summary>Where Prometheus scrapes.</summary>
    public string Endpoint { get; }

    public void OnLog(TrainerContext c, JsonObject entry)
    {
        double? Number(string key) => entry[key] is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number ? LossCurve.Number(v) : null;
        if (Number("loss") is double loss) _trainLoss.Record(loss);
        if (Number("eval_loss") is double evalLoss) _evalLoss.Record(evalLoss);
        if (Number("learning_rate") is double lr) _learningRate.Record(lr);
        if (Number("epoch") is double epoch) _epoch.Record(epoch);
        if (Number("grad_norm") is double norm) _gradNorm.Record(norm);
        if (Number("memory_usage") is double memory) _memory.Record(memory);
    }

    public void OnStepEnd(TrainerContext c)
    {
        _steps.Add(1);
        if (c.LastStep is { } s) _epoch.Record(s.EpochProgress);
    }

    public void OnEvaluate(TrainerContext c, JsonObject metrics)
    {
        foreach (var (key, node) in metrics)
        {
            if (!key.StartsWith("eval_", StringComparison.Ordinal) || node is not JsonValue v || v.GetValueKind() != System.Text.Json.JsonValueKind.Number) continue;
            // eval_loss has its gauge already (Axolotl's second create_gauge of the same name returns that one).
            if (key == "eval_loss") { _evalLoss.Record(LossCurve.Number(v)); continue; }
            if (!_evalGauges.TryGetValue(key, out var gauge))
                _evalGauges[key] = gauge = _meter.CreateGauge<double>($"axolotl_{key}", "1", $"Evaluation metric: {key}");
            gauge.Record(LossCurve.Number(v));
        }
    }

    public void Dispose()
    {
        _provider.Dispose();
        _meter.Dispose();
    }
}
