namespace Axolotl.Config;

/// <summary>Axolotl's checks and derived values for the evaluation-table, causal-LM-eval and tracker keys.</summary>
static class Trackers
{
    /// <summary>Axolotl's SUPPORTED_METRICS for eval_causal_lm_metrics.</summary>
    public static readonly string[] CausalLmMetrics = ["sacrebleu", "comet", "ter", "chrf", "perplexity"];

    /// <summary>The metrics computed here: the others need HF evaluate's downloaded scripts (and comet a model).</summary>
    public static readonly string[] ComputedMetrics = ["perplexity"];

    /// <summary>Axolotl's default eval_causal_lm_metrics.</summary>
    public static readonly string[] DefaultMetrics = ["sacrebleu", "comet", "ter", "chrf"];

    /// <summary>What Axolotl's validators reject (check_eval_packing, check_causal_lm_evals), before any default is derived.</summary>
    public static void CheckEvalKeys(AxolotlConfig c, Func<string, bool> isGiven, Action<string, string> fail)
    {
        if (c.SamplePacking && c.EvalTableSize > 0 && c.EvalSamplePacking != false)
            fail("eval_table_size", "eval_table_size and eval_sample_packing are not supported together with sample_packing; set eval_sample_packing: false.");
        if (c.DoCausalLmEval && c.EvalSamplePacking == true)
            fail("do_causal_lm_eval", "do_causal_lm_eval is enabled, so eval_sample_packing must be false.");
        if (c.EvalCausalLmMetrics?.Except(CausalLmMetrics).ToList() is { Count: > 0 } unknown)
            fail("eval_causal_lm_metrics", $"eval_causal_lm_metrics must be among {string.Join(", ", CausalLmMetrics)}; '{unknown[0]}' is not.");
        if (c.EvalTableSize < 0) fail("eval_table_size", "eval_table_size must be 0 or more rows.");
        if (c.EvalMaxNewTokens < 1) fail("eval_max_new_tokens", "eval_max_new_tokens must be at least 1.");
        if (c.OtelMetricsPort is < 0 or > 65535) fail("otel_metrics_port", $"otel_metrics_port {c.OtelMetricsPort} is not a TCP port (0 to 65535).");
    }

    /// <summary>Derived values (use_mlflow from the experiment name); returns warnings by key.</summary>
    public static IEnumerable<(string Key, string Text)> Resolve(AxolotlConfig c)
    {
        if (c.UseMlflow is null && !string.IsNullOrEmpty(c.MlflowExperimentName))
        {
            c.UseMlflow = true;
            c.Sources["use_mlflow"] = "mlflow_experiment_name";
        }
        if (c.DoCausalLmEval)
        {
            var metrics = c.EvalCausalLmMetrics ?? [.. DefaultMetrics];
            var skipped = metrics.Except(ComputedMetrics).ToList();
            if (skipped.Count > 0)
                yield return (c.EvalCausalLmMetrics != null ? "eval_causal_lm_metrics" : "do_causal_lm_eval",
                    $"eval_causal_lm_metrics {string.Join(", ", skipped)} {(skipped.Count == 1 ? "is" : "are")} not computed: Axolotl loads {(skipped.Count == 1 ? "it" : "them")} from HF evaluate's Hub scripts (comet also downloads a model), and a run here downloads nothing; only perplexity is computed.");
        }
    }
}
