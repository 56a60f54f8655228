using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Recipes;
using Axolotl.Runtime;
using Axolotl.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench config.yml [--steps N] [--warmup W] [--gradient-checkpointing on|off] [--compare-packing] [--device D] [--out results.jsonl]</c>:
/// matmul peak, preprocessing throughput and training throughput/MFU for one config, as a table and as JSON lines
/// comparable across commits. With --compare-packing the training benchmark runs twice, sample_packing off and on.
/// --device (auto, cpu, cuda, cuda:N; default the config's <c>device</c>) runs the matmul peak and the training there.
/// </summary>
public static class Bench
{
    const int MatmulSize = 2048;
    const int MatmulRepetitions = 5;

    const string Usage = "usage: axolotl-bench config.yml [--steps N] [--warmup W] [--gradient-checkpointing on|off] [--compare-packing] [--device auto|cpu|cuda|cuda:N] [--hf-ref DIR [--rounds R] [--hf-prec bf16|bf16-autocast|fp32]] [--out results.jsonl]";

    public static int Run(string[] args)
    {
        string? configPath = null, outPath = null, deviceSetting = null, hfRef = null;
        string hfPrecision = "bf16";
        int steps = 10, warmup = 2, rounds = 3;
        bool? checkpointing = null;
        bool comparePacking = false;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new UserError($"{args[i]} needs a value.");
            int NextInt(int min) => int.TryParse(Next(), NumberStyles.None, CultureInfo.InvariantCulture, out var v) && v >= min
                ? v : throw new UserError($"{args[i - 1]} needs a whole number of at least {min}.");
            switch (args[i])
            {
                case "--steps": steps = NextInt(1); break;
                case "--warmup": warmup = NextInt(0); break;
                case "--out": outPath = Next(); break;
                // Run once with each to see the memory recomputation saves (peak RSS) and the time it costs (step s).
                case "--gradient-checkpointing":
                    checkpointing = Next() switch { "on" => true, "off" => false, var v => throw new UserError($"--gradient-checkpointing needs on or off, not '{v}'.") };
                    break;
                case "--compare-packing": comparePacking = true; break;
                case "--device": deviceSetting = Next(); break;
                // Side by side with the Hugging Face reference (SideBySideBench): alternating rounds, ratio printed.
                case "--hf-ref": hfRef = Next(); break;
                case "--rounds": rounds = NextInt(1); break;
                case "--hf-prec":
                    hfPrecision = Next() is "bf16" or "bf16-autocast" or "fp32" ? args[i] : throw new UserError($"--hf-prec needs bf16, bf16-autocast or fp32, not '{args[i]}'.");
                    break;
                case var a when a.StartsWith('-'): throw new UserError($"unknown option {a}; {Usage}");
                default:
                    if (configPath != null) throw new UserError("give one config file.");
                    configPath = args[i]; break;
            }
        }
        if (configPath == null) throw new UserError(Usage);
        if (hfRef != null) return SideBySideBench.Run(configPath, hfRef, rounds, steps, warmup, hfPrecision, outPath);

        TorchRuntime.EnsureLoaded();
        var config = ConfigLoader.Load(configPath, deviceSetting is null ? null : ["--device", deviceSetting]);
        var device = ModelLoading.ResolveDevice(config);
        var context = new JsonObject
        {
            ["timestamp"] = DateTimeOffset.UtcNow.ToString("o", CultureInfo.InvariantCulture),
            ["commit"] = GitCommit(),
            ["config"] = configPath,
            ["machine"] = new JsonObject
            {
                ["cores"] = Environment.ProcessorCount,
                ["cpu_model"] = CpuModel(),
                ["bf16"] = Hardware.CpuHasBf16(),
                ["torch_threads"] = get_num_threads(),
                ["allocator"] = Axolotl.Runtime.NativeAllocator.Current,
                ["device"] = ComputeDevice.Describe(device),
            },
        };
        var results = new List<JsonObject>();
        var table = new Table().AddColumns("benchmark", "metric", "value").Caption($"FLOPs/token = {Flops.Formula}");
        void Row(string bench, string metric, string value) => table.AddRow(Markup.Escape(bench), Markup.Escape(metric), Markup.Escape(value));

        // 1. Matmul peak per dtype.
        var peak = new Dictionary<ScalarType, double>();
        foreach (var (dtype, name) in new[] { (ScalarType.BFloat16, "bf16"), (ScalarType.Float32, "fp32") })
        {
            AnsiConsole.MarkupLine($"[grey]matmul {MatmulSize}³ {name}…[/]");
            var gflops = Flops.MeasureMatmulGflops(dtype, MatmulSize, MatmulRepetitions, device);
            peak[dtype] = Stats.Median(gflops);
            results.Add(new JsonObject
            {
                ["benchmark"] = "matmul", ["dtype"] = name, ["size"] = MatmulSize, ["repetitions"] = MatmulRepetitions,
                ["gflops_median"] = Round(peak[dtype]), ["gflops_min"] = Round(gflops.Min()), ["gflops_max"] = Round(gflops.Max()),
            });
            Row("matmul", $"{name} GFLOP/s (median of {MatmulRepetitions})", $"{peak[dtype]:F1}");
        }

        // 2. Preprocessing (tokenizer load included, as a run pays it).
        AnsiConsole.MarkupLine("[grey]preprocessing…[/]");
        var clock = Stopwatch.StartNew();
        var (data, tokenizer, tokenizerDir) = PreprocessRecipe.Run(config, new QuietReporter());
        double prepSeconds = clock.Elapsed.TotalSeconds;
        long prepTokens = data.TotalTokens + data.Eval.Sum(e => (long)e.InputIds.Length);
        int exampleCount = data.Examples.Count + data.Eval.Count;
        // The trainer's own mfu uses the same sequence length: the mean tokens per training example.
        double meanSeq = data.Examples.Count == 0 ? 0 : (double)data.TotalTokens / data.Examples.Count;
        results.Add(new JsonObject
        {
            ["benchmark"] = "preprocess", ["rows"] = data.RowsRead, ["examples"] = exampleCount, ["tokens"] = prepTokens,
            ["seconds"] = Round(prepSeconds, 4), ["rows_per_second"] = Round(data.RowsRead / prepSeconds),
            ["tokens_per_second"] = Round(prepTokens / prepSeconds),
        });
        Row("preprocess", "rows/s", $"{data.RowsRead / prepSeconds:F0} ({data.RowsRead} rows in {prepSeconds:F2} s)");
        Row("preprocess", "tokens/s", $"{prepTokens / prepSeconds:F0} ({prepTokens} tokens)");

        // 2b. Tokenization alone: the prepared examples decoded back to text and encoded by a freshly loaded tokenizer,
        // once with its per-word cache cold (as a run starts) and once warm.
        if (tokenizer is not null && data.Examples.Count > 0)
        {
            var texts = data.Examples.Take(5000).Select(e => tokenizer.Decode(e.InputIds, skipSpecialTokens: true)).ToList();
            var fresh = Axolotl.Tokenization.Tokenizer.FromFolder(tokenizerDir);
            foreach (var pass in new[] { "cold", "warm" })
            {
                clock.Restart();
                long encoded = 0, chars = 0;
                foreach (var text in texts) { encoded += fresh.Encode(text, addSpecialTokens: false).Count; chars += text.Length; }
                double seconds = clock.Elapsed.TotalSeconds;
                results.Add(new JsonObject
                {
                    ["benchmark"] = "tokenize", ["cache"] = pass, ["texts"] = texts.Count, ["chars"] = chars, ["tokens"] = encoded,
                    ["seconds"] = Round(seconds, 4), ["tokens_per_second"] = Round(encoded / seconds),
                });
                Row("tokenize", $"tokens/s ({pass} cache)", $"{encoded / seconds:F0} ({encoded} tokens, {chars / seconds / 1e6:F2} M chars/s)");
            }
        }

        // 3. Training: W warm-up + N measured steps through the library's own path, nothing kept.
        if (checkpointing is bool on) config.GradientCheckpointing = on ? GradientCheckpointingMode.True : GradientCheckpointingMode.False;
        foreach (bool packing in comparePacking ? [false, true] : new[] { config.SamplePacking })
        {
            config.SamplePacking = packing;
            if (packing) config.PadToSequenceLen ??= true; // as the loader resolves it for sample_packing
            TrainBench(config, device, warmup, steps, peak, meanSeq, results, Row);
        }

        // 4. Bytes the frozen base's Linear weights (all but lm_head, what bnb quantizes) hold: bf16, NF4, int8.
        AnsiConsole.MarkupLine("[grey]base weight storage…[/]");
        foreach (var line in BaseWeightBytes(config, DecoderConfig.FromFolder(config.BaseModelConfig ?? config.BaseModel)))
        {
            results.Add(line);
            Row("base_weights", $"{line["format"]} bytes (vs bf16)", $"{(long)line["linear_weight_bytes"]! / 1048576.0:F2} MiB ({(double)line["ratio_to_bf16"]!:F3}x)");
        }
        AnsiConsole.Write(table);

        var lines = results.Select(r =>
        {
            var line = (JsonObject)context.DeepClone();
            foreach (var (k, v) in r) line[k] = v?.DeepClone();
            return line.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        }).ToList();
        if (outPath != null)
        {
            File.AppendAllLines(outPath, lines);
            AnsiConsole.MarkupLine($"[grey]appended {lines.Count} results to {Markup.Escape(outPath)}[/]");
        }
        else foreach (var l in lines) Console.WriteLine(l);
        return 0;
    }

    static void TrainBench(AxolotlConfig config, Device device, int warmup, int steps, Dictionary<ScalarType, double> peak, double meanSeq,
                           List<JsonObject> results, Action<string, string, string> Row)
    {
        var outputDir = Path.Combine(Path.GetTempPath(), $"axolotl-bench-{Environment.ProcessId}-{Guid.NewGuid():N}");
        config.OutputDir = outputDir;
        config.MaxSteps = warmup + steps;
        config.SaveStrategy = IntervalStrategy.No;
        config.EvalStrategy = IntervalStrategy.No;
        config.LoggingSteps = 1; // so the tokens/s the trainer reports at each step is that step's own
        config.ResumeFromCheckpoint = null;
        config.AutoResumeFromCheckpoints = false;
        bool bf16 = ModelLoading.ComputeType(config, device) == ScalarType.BFloat16;
        var architecture = DecoderConfig.FromFolder(config.BaseModelConfig ?? config.BaseModel);
        var observer = new StepRecorder();
        AnsiConsole.MarkupLine($"[grey]training {warmup} + {steps} steps{(config.SamplePacking ? ", sample_packing" : "")}…[/]");
        double peakInUse = peak[bf16 ? ScalarType.BFloat16 : ScalarType.Float32];
        try { FinetuneRecipe.Run(config, observer, peakFlops: peakInUse * 1e9); }
        finally { try { Directory.Delete(outputDir, recursive: true); } catch (IOException) { } }

        var measured = observer.Steps.Where(s => s.Step > warmup).ToList();
        var stepSeconds = measured.Select(s => s.Seconds).ToList();
        var tokensPerSecond = measured.Select(s => s.TokensPerSecond).ToList();
        var plan = observer.Plan ?? throw new InvalidOperationException("training did not start");
        double flopsPerToken = Flops.PerToken(architecture, plan.TotalParameters, plan.TrainableParameters, meanSeq);
        double medianTps = Stats.Median(tokensPerSecond);
        double achieved = medianTps * flopsPerToken / 1e9;
        double mfu = achieved / peakInUse;
        long rssKb = Hardware.PeakRssKb();
        long gpuBytes = observer.PeakGpuBytes;
        results.Add(new JsonObject
        {
            ["benchmark"] = "train", ["dtype"] = bf16 ? "bf16" : "fp32", ["adapter"] = config.Adapter is { } adapter ? ConfigLoader.Spelling(adapter) : "full",
            ["gradient_checkpointing"] = config.RecomputesLayers,
            ["micro_batch_size"] = config.MicroBatchSize, ["gradient_accumulation_steps"] = config.GradientAccumulationSteps,
            ["sample_packing"] = config.SamplePacking, ["packing_efficiency"] = plan.PackingEfficiency is double e ? Math.Round(e, 5) : null,
            ["warmup_steps"] = warmup, ["measured_steps"] = measured.Count,
            ["tokens_per_second_median"] = Round(medianTps),
            ["step_seconds_p10"] = Round(Stats.Percentile(stepSeconds, 10), 4),
            ["step_seconds_p50"] = Round(Stats.Percentile(stepSeconds, 50), 4),
            ["step_seconds_p90"] = Round(Stats.Percentile(stepSeconds, 90), 4),
            ["parameters_total"] = plan.TotalParameters, ["parameters_trainable"] = plan.TrainableParameters,
            ["mean_tokens_per_example"] = Round(meanSeq),
            ["flops_per_token"] = Math.Round(flopsPerToken), ["flops_formula"] = Flops.Formula,
            ["achieved_gflops"] = Round(achieved), ["peak_gflops"] = Round(peakInUse), ["mfu"] = Math.Round(mfu, 5),
            ["mfu_trainer_log_median"] = Math.Round(Stats.Median(observer.LoggedMfu.Where(m => m.Step > warmup).Select(m => m.Mfu).ToList()), 5),
            ["peak_rss_mb"] = Round(rssKb / 1024.0),
            ["device"] = ComputeDevice.Describe(device),
        });
        if (gpuBytes > 0) results[^1]["peak_gpu_memory_in_use_mb"] = Round(gpuBytes / 1048576.0);
        string name = config.SamplePacking ? "train (packed)" : "train";
        if (plan.PackingEfficiency is double efficiency)
            Row(name, "packing efficiency", $"{efficiency:F4} ({plan.BatchesPerEpoch} micro-batches per epoch)");
        Row(name, "tokens/s (median)", $"{medianTps:F0}");
        Row(name, "step s p10 / p50 / p90",
            $"{Stats.Percentile(stepSeconds, 10):F3} / {Stats.Percentile(stepSeconds, 50):F3} / {Stats.Percentile(stepSeconds, 90):F3}");
        Row(name, "FLOPs/token", $"{flopsPerToken:E3} ({plan.TrainableParameters:N0} of {plan.TotalParameters:N0} params trained, seq {meanSeq:F0})");
        Row(name, $"MFU ({(bf16 ? "bf16" : "fp32")} peak)", $"{mfu:P2} ({achieved:F2} of {peakInUse:F1} GFLOP/s)");
        Row("process", $"peak RSS (VmHWM), gradient checkpointing {(config.RecomputesLayers ? "on" : "off")}", $"{rssKb / 1024.0:F0} MiB");
        if (gpuBytes > 0) Row("process", "peak GPU memory in use (cudaMemGetInfo after each step)", $"{gpuBytes / 1048576.0:F0} MiB");
    }

    static double Round(double v, int digits = 2) => Math.Round(v, digits);

    /// <summary>The base model in bf16, then its Linear weights quantized as QLoRA (NF4 with and without double
    /// quantization, Axolotl's default being with) and as load_in_8bit: the bytes each stores, measured on the tensors.</summary>
    static List<JsonObject> BaseWeightBytes(AxolotlConfig config, DecoderConfig architecture)
    {
        var lines = new List<JsonObject>();
        long? bf16Bytes = null;
        foreach (var (format, settings) in new (string, QuantizationSettings?)[]
                 {
                     ("bf16", null), ("nf4+double_quant", new(QuantKind.Nf4)), ("nf4", new(QuantKind.Nf4, DoubleQuant: false)), ("int8", new(QuantKind.Int8)),
                 })
        {
            using var scope = NewDisposeScope();
            using var model = CausalLM.Create(architecture, ScalarType.BFloat16, ScalarType.BFloat16);
            if (config.RandomInitWeights) model.InitializeWeights(config.Seed); else model.LoadWeights(config.BaseModel);
            long bytes;
            if (settings is null)
                bytes = model.named_modules().Where(m => m.module is Linear && m.name != "lm_head").Sum(m => ((Linear)m.module).weight.numel() * 2);
            else
            {
                Quantizer.QuantizeLinears(model, settings);
                bytes = Quantizer.QuantizedWeightBytes(model);
            }
            bf16Bytes ??= bytes;
            long otherBytes = model.parameters().Sum(p => p.numel() * p.element_size());
            lines.Add(new JsonObject
            {
                ["benchmark"] = "base_weights", ["format"] = format, ["linear_weight_bytes"] = bytes,
                ["ratio_to_bf16"] = Math.Round((double)bytes / bf16Bytes.Value, 4),
                ["model_bytes"] = bytes + otherBytes - (settings is null ? bytes : 0),
            });
        }
        return lines;
    }

    internal static string CpuModel() => Hardware.CpuModelName();

    internal static string GitCommit()
    {
        string? Git(string arguments)
        {
            try
            {
                var info = new ProcessStartInfo("git", arguments) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                using var p = Process.Start(info)!;
                var output = p.StandardOutput.ReadToEnd().Trim();
                p.WaitForExit();
                return p.ExitCode == 0 ? output : null;
            }
            catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException) { return null; }
        }
        var head = Git("rev-parse HEAD");
        if (string.IsNullOrEmpty(head)) return "unknown";
        var dirty = Git("status --porcelain --untracked-files=no");
        return string.IsNullOrEmpty(dirty) ? head : head + "-dirty";
    }

    sealed class QuietReporter : IRecipeReporter;

    /// <summary>Times each optimizer step from the trainer's own clock.</summary>
    internal sealed class StepRecorder : IRecipeReporter
    {
        public TrainingPlan? Plan;
        public readonly List<(int Step, double Seconds, double TokensPerSecond)> Steps = [];
        public readonly List<(int Step, double Mfu)> LoggedMfu = [];
        public void OnLog(JsonObject entry)
        {
            if (entry["mfu"] is JsonNode mfu && entry["step"] is JsonNode step) LoggedMfu.Add(((int)step, (double)mfu));
        }
        TimeSpan _last;
        public void OnStart(TrainingPlan plan) { Plan = plan; _last = TimeSpan.Zero; }
        public long PeakGpuBytes = -1;
        public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed)
        {
            PeakGpuBytes = Math.Max(PeakGpuBytes, Hardware.PeakGpuMemoryInUseBytes());
            Steps.Add((step, (elapsed - _last).TotalSeconds, tokensPerSecond));
            _last = elapsed;
        }
    }
}
