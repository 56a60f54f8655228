using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Runtime;
using Axolotl.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Axolotl.Bench;

/// <summary>
/// <c>axolotl-bench config.yml --hf-ref DIR [--rounds R] [--steps N] [--warmup W] [--hf-prec bf16|bf16-autocast|fp32] [--out results.jsonl]</c>:
/// this config's training step and the Hugging Face reference (transformers + PEFT, set up in DIR as
/// shared/hfref/README.md says) on the same model shape, batch, LoRA targets and step, in alternating rounds (ours, HF,
/// ours, HF...), each round a fresh process so each peak RSS is that run's own. Tokens/s, MFU against the bf16 matmul
/// peak measured in this invocation (before every round), peak RSS and the ratio ours / HF.
/// </summary>
/// <remarks>
/// Token accounting, identical on both sides: an optimizer step trains micro_batch_size × sequence_len tokens
/// (× gradient_accumulation_steps), every row full (sample_packing with padding to sequence_len here, random ids
/// there); tokens/s = those tokens ÷ the step's wall time, median over the N steps after W warm-up steps.
/// </remarks>
public static class SideBySideBench
{
    const int MatmulSize = 2048, MatmulRepetitions = 5;
    static readonly string[] HfLoraTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    public static int Run(string configPath, string hfRef, int rounds, int steps, int warmup, string hfPrecision, string? outPath)
    {
        TorchRuntime.EnsureLoaded();
        var config = ConfigLoader.Load(configPath);
        var script = Path.Combine(hfRef, "scripts", "step4_bench_cfg.py");
        if (!File.Exists(Path.Combine(hfRef, "env.sh")) || !File.Exists(script))
            throw new UserError($"--hf-ref {hfRef} is not a Hugging Face reference folder (env.sh and scripts/step4_bench_cfg.py, set up as shared/hfref/README.md says).");
        var (hfMode, note) = HfCounterpart(config);
        string configJson = Path.GetFullPath(Path.Combine(config.BaseModelConfig ?? config.BaseModel, "config.json"));
        var architecture = ModelLoading.Architecture(config);
        int threads = get_num_threads();
        long tokensPerStep = (long)config.MicroBatchSize * config.SequenceLen * config.GradientAccumulationSteps;
        string accounting = $"tokens/step = micro_batch_size {config.MicroBatchSize} x sequence_len {config.SequenceLen} x accumulation {config.GradientAccumulationSteps} = {tokensPerStep} on both sides " +
                            "(every row full: packed and padded to sequence_len here, random ids there); tokens/s = tokens/step / step wall time, median over the measured steps";

        var peaks = new List<double>();
        var ours = new List<JsonObject>();
        var theirs = new List<JsonObject>();
        for (int round = 1; round <= rounds; round++)
        {
            AnsiConsole.MarkupLine($"[grey]round {round}/{rounds}: matmul {MatmulSize}³ bf16…[/]");
            peaks.Add(Stats.Median(Flops.MeasureMatmulGflops(ScalarType.BFloat16, MatmulSize, MatmulRepetitions)));
            AnsiConsole.MarkupLine($"[grey]round {round}/{rounds}: Axolotl.NET, {warmup} + {steps} steps…[/]");
            ours.Add(RunOurs(configPath, steps, warmup));
            AnsiConsole.MarkupLine($"[grey]round {round}/{rounds}: Hugging Face ({hfMode}, {hfPrecision}), {warmup} + {steps} steps…[/]");
            theirs.Add(RunHf(hfRef, script, configJson, hfMode, hfPrecision, threads, config, steps, warmup));
        }

        double peak = Stats.Median(peaks);
        var first = ours[0];
        long total = (long)first["parameters_total"]!, trainable = (long)first["parameters_trainable"]!;
        double flopsPerToken = Flops.PerToken(architecture, total, trainable, config.SequenceLen);
        long hfTrainable = (long)theirs[0]["params_trainable"]!;
        if (hfMode == "lora" && config.Adapter == AdapterKind.Lora && hfTrainable != trainable)
            AnsiConsole.MarkupLine($"[yellow]trainable parameters differ: {trainable:N0} here, {hfTrainable:N0} in HF[/]");

        double Tps(JsonObject run, string key) => tokensPerStep / Stats.Median(((JsonArray)run[key]!).Select(v => (double)v!).ToList());
        var ourTps = ours.Select(r => Tps(r, "step_seconds")).ToList();
        var hfTps = theirs.Select(r => Tps(r, "step_times_s")).ToList();
        var ourRss = ours.Select(r => (double)r["peak_rss_kib"]! / 1048576.0).ToList();
        var hfRss = theirs.Select(r => (double)r["peak_rss_mib"]! / 1024.0).ToList();
        double Mfu(double tps) => tps * flopsPerToken / 1e9 / peak;

        var table = new Table().AddColumns("round", "peak GFLOP/s", "ours tok/s", "ours MFU", "ours RSS GiB", "HF tok/s", "HF MFU", "HF RSS GiB", "ours/HF");
        for (int i = 0; i < rounds; i++)
            table.AddRow($"{i + 1}", $"{peaks[i]:F0}", $"{ourTps[i]:F0}", $"{Mfu(ourTps[i]):P1}", $"{ourRss[i]:F2}", $"{hfTps[i]:F0}", $"{Mfu(hfTps[i]):P1}", $"{hfRss[i]:F2}", $"{ourTps[i] / hfTps[i]:F2}x");
        double ourMedian = Stats.Median(ourTps), hfMedian = Stats.Median(hfTps);
        table.AddRow("median", $"{peak:F0}", $"{ourMedian:F0}", $"{Mfu(ourMedian):P1}", $"{ourRss.Max():F2} max", $"{hfMedian:F0}", $"{Mfu(hfMedian):P1}", $"{hfRss.Max():F2} max", $"{ourMedian / hfMedian:F2}x");
        table.Caption(Markup.Escape($"{Path.GetFileName(configPath)} (ours: Axolotl.NET; HF: transformers + PEFT {hfMode}, {hfPrecision}): {architecture.NumLayers} layers, hidden {architecture.HiddenSize}, {total:N0} params ({trainable:N0} trained). " +
                                    $"{accounting}. FLOPs/token {flopsPerToken:E3} = {Flops.Formula}. MFU against the median bf16 matmul peak of this invocation. {note}"));
        AnsiConsole.Write(table);

        var line = new JsonObject
        {
            ["benchmark"] = "side_by_side", ["timestamp"] = DateTimeOffset.UtcNow.ToString("o", CultureInfo.InvariantCulture),
            ["commit"] = Bench.GitCommit(), ["config"] = configPath, ["cpu_model"] = Bench.CpuModel(), ["cores"] = Environment.ProcessorCount, ["allocator"] = Axolotl.Runtime.NativeAllocator.Current,
            ["torch_threads"] = threads, ["load_average"] = LoadAverage(), ["hf_mode"] = hfMode, ["hf_precision"] = hfPrecision, ["note"] = note,
            ["token_accounting"] = accounting, ["tokens_per_step"] = tokensPerStep, ["flops_per_token"] = Math.Round(flopsPerToken),
            ["parameters_total"] = total, ["parameters_trainable"] = trainable, ["hf_parameters_trainable"] = hfTrainable,
            ["matmul_bf16_gflops"] = new JsonArray(peaks.Select(p => (JsonNode)Math.Round(p, 1)).ToArray()),
            ["ours_tokens_per_second"] = new JsonArray(ourTps.Select(t => (JsonNode)Math.Round(t, 1)).ToArray()),
            ["hf_tokens_per_second"] = new JsonArray(hfTps.Select(t => (JsonNode)Math.Round(t, 1)).ToArray()),
            ["ours_peak_rss_gib"] = new JsonArray(ourRss.Select(t => (JsonNode)Math.Round(t, 3)).ToArray()),
            ["hf_peak_rss_gib"] = new JsonArray(hfRss.Select(t => (JsonNode)Math.Round(t, 3)).ToArray()),
            ["ours_mfu_median"] = Math.Round(Mfu(ourMedian), 4), ["hf_mfu_median"] = Math.Round(Mfu(hfMedian), 4),
            ["ratio_median"] = Math.Round(ourMedian / hfMedian, 3),
            ["hf_versions"] = theirs[0]["versions"]?.DeepClone(),
        };
        var text = line.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        if (outPath != null) { File.AppendAllLines(outPath, [text]); AnsiConsole.MarkupLine($"[grey]appended the result to {Markup.Escape(outPath)}[/]"); }
        else Console.WriteLine(text);
        return 0;
    }

    /// <summary>What the HF script runs for this config (its LoRA is fixed: r 8, alpha 16, dropout 0, all seven Llama linears), or why it cannot.</summary>
    static (string Mode, string Note) HfCounterpart(AxolotlConfig config)
    {
        if (config.Rl is not null) throw new UserError($"--hf-ref compares supervised fine-tuning steps; this config sets rl: {config.Rl}.");
        if (!config.SamplePacking || config.PadToSequenceLen == false)
            throw new UserError("--hf-ref needs sample_packing: true (rows padded to sequence_len), so every row holds sequence_len tokens as the reference's random rows do.");
        if (config.Adapter is null) return ("full", "");
        if (config.LoraR != 8 || config.LoraAlpha != 16 || config.LoraDropout != 0)
            throw new UserError($"--hf-ref: the reference's LoRA is r 8, alpha 16, dropout 0; this config has lora_r {config.LoraR}, lora_alpha {config.LoraAlpha}, lora_dropout {config.LoraDropout}.");
        bool allLinears = config.LoraTargetLinear || (config.LoraTargetModules is { } targets && HfLoraTargets.All(targets.Contains) && targets.Count == HfLoraTargets.Length);
        if (!allLinears) throw new UserError("--hf-ref: the reference's LoRA targets q, k, v, o, gate, up and down projections; set lora_target_linear: true.");
        return config.Adapter == AdapterKind.Lora ? ("lora", "")
            : ("lora", $"HF has no CPU {ConfigLoader.Spelling(config.Adapter.Value)}: its column is LoRA; compare with this config's LoRA twin for the {ConfigLoader.Spelling(config.Adapter.Value)} / LoRA ratio.");
    }

    /// <summary>One of our rounds: this executable again (<c>train-round</c>), so its peak RSS is the run's alone.</summary>
    static JsonObject RunOurs(string configPath, int steps, int warmup)
    {
        string self = Environment.ProcessPath!;
        var arguments = new List<string>();
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") arguments.Add(typeof(SideBySideBench).Assembly.Location);
        arguments.AddRange(["train-round", configPath, "--steps", $"{steps}", "--warmup", $"{warmup}"]);
        return RunJson(self, arguments, null, "Axolotl.NET round");
    }

    static JsonObject RunHf(string hfRef, string script, string configJson, string mode, string precision, int threads, AxolotlConfig config, int steps, int warmup)
    {
        var outFile = Path.Combine(Path.GetTempPath(), $"axolotl-hfref-{Environment.ProcessId}-{Guid.NewGuid():N}.jsonl");
        try
        {
            // env.sh puts the pinned source trees and shims on PYTHONPATH and sets $PYTHON (Debian's python3 with torch).
            string command = "source \"$HFREF/env.sh\" && export PYTHONHASHSEED=0 && exec \"$PYTHON\" \"$0\" \"$@\"";
            var arguments = new List<string>
            {
                "-c", command, script, "--config-json", configJson, "--mode", mode, "--prec", precision, "--threads", $"{threads}",
                "--batch", $"{config.MicroBatchSize * config.GradientAccumulationSteps}", "--seq", $"{config.SequenceLen}",
                "--warmup", $"{warmup}", "--steps", $"{steps}", "--max-pos", $"{config.SequenceLen}", "--out", outFile,
            };
            // Built directly in bf16 as from_pretrained(torch_dtype=bfloat16) would load it, not fp32 first.
            if (precision == "bf16") arguments.Add("--build-bf16");
            RunJson("bash", arguments, new() { ["HFREF"] = Path.GetFullPath(hfRef) }, "Hugging Face round");
            return (JsonObject)JsonNode.Parse(File.ReadLines(outFile).Last())!;
        }
        finally { File.Delete(outFile); }
    }

    /// <summary>Runs a child, echoing its output in grey, and returns the last line of its stdout that is a JSON object.</summary>
    static JsonObject RunJson(string file, List<string> arguments, Dictionary<string, string>? environment, string what)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? []) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        string? json = null;
        var errors = new List<string>();
        process.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (errors) errors.Add(l); };
        process.BeginErrorReadLine();
        while (process.StandardOutput.ReadLine() is { } l)
        {
            if (l.StartsWith('{')) json = l;
            else AnsiConsole.MarkupLine($"[grey]  {Markup.Escape(l)}[/]");
        }
        process.WaitForExit();
        if (process.ExitCode != 0 || json is null)
            throw new UserError($"{what} failed (exit {process.ExitCode}): {string.Join(" | ", errors.TakeLast(5))}");
        // The HF script's stdout line is a summary; its --out file holds the full record.
        return (JsonObject)JsonNode.Parse(json)!;
    }

    /// <summary><c>axolotl-bench train-round config.yml --steps N --warmup W</c>: one training run, one JSON line (step seconds, parameters, peak RSS).</summary>
    public static int TrainRound(string[] args)
    {
        string configPath = args.Length > 0 ? args[0] : throw new UserError("usage: axolotl-bench train-round config.yml --steps N --warmup W");
        int steps = 10, warmup = 2;
        for (int i = 1; i + 1 < args.Length; i += 2)
            if (args[i] == "--steps") steps = int.Parse(args[i + 1], CultureInfo.InvariantCulture);
            else if (args[i] == "--warmup") warmup = int.Parse(args[i + 1], CultureInfo.InvariantCulture);
        TorchRuntime.EnsureLoaded();
        var config = ConfigLoader.Load(configPath);
        var outputDir = Path.Combine(Path.GetTempPath(), $"axolotl-bench-{Environment.ProcessId}-{Guid.NewGuid():N}");
        config.OutputDir = outputDir;
        config.MaxSteps = warmup + steps;
        config.SaveStrategy = IntervalStrategy.No;
        config.EvalStrategy = IntervalStrategy.No;
        config.LoggingSteps = 1;
        config.ResumeFromCheckpoint = null;
        config.AutoResumeFromCheckpoints = false;
        var observer = new Bench.StepRecorder();
        try { FinetuneRecipe.Run(config, observer); }
        finally { try { Directory.Delete(outputDir, recursive: true); } catch (IOException) { } }
        var plan = observer.Plan ?? throw new InvalidOperationException("training did not start");
        var measured = observer.Steps.Where(s => s.Step > warmup).Select(s => (JsonNode)s.Seconds).ToArray();
        Console.WriteLine(new JsonObject
        {
            ["step_seconds"] = new JsonArray(measured),
            ["tokens_per_step"] = (long)config.MicroBatchSize * config.SequenceLen * config.GradientAccumulationSteps,
            ["parameters_total"] = plan.TotalParameters, ["parameters_trainable"] = plan.TrainableParameters,
            ["peak_rss_kib"] = Hardware.PeakRssKb(), ["torch_threads"] = get_num_threads(),
        }.ToJsonString());
        return 0;
    }

    internal static string LoadAverage()
    {
        try { return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "unknown"; }
    }
}
