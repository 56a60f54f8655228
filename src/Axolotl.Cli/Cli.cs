using Axolotl.Config;
using Axolotl.Recipes;
using Axolotl.Runtime;
using Spectre.Console;

namespace Axolotl.Cli;

/// <summary>
/// The command line: a few lines per command over the library. User mistakes (UserError) print one sentence and exit
/// with 2; anything else is a bug: one line here, the details in a log file, exit 1.
/// </summary>
public static class Cli
{
    const string Usage = """
        usage: axolotl <command> <config.yml> [--key value ...]

        commands:
          train       fine-tune as the config says (LoRA or full), save to output_dir
          preprocess  tokenize the datasets as train would and report; --debug shows examples as token(label, id)
          plan        predict the run's peak memory by part and its time per step, loading nothing (train --dry-run: the same)
          validate    load and check the config without touching model or data; print the resolved values
          evaluate    score the model (and adapter: lora_model_dir, else output_dir) on the train and validation splits; write output_dir/eval_summary.csv
          merge-lora  fold the LoRA adapter (lora_model_dir, default output_dir) into base_model; save to output_dir/merged
                      (--gguf TYPE: also output_dir/merged/model-TYPE.gguf)
          export-gguf merge as merge-lora does (or take base_model as it is, without an adapter) and write one GGUF file
                      for llama.cpp/Ollama: --outtype f32|f16|bf16|q8_0|q4_0 (default f16), --out FILE
                      (default output_dir/model-TYPE.gguf)
          inference   answer prompts (--prompt TEXT, or stdin until EOF) with base_model (+ the adapter), streaming the text;
                      --max-new-tokens N, --temperature T (0: greedy), --top-k K, --top-p P, --repetition-penalty R;
                      --gradio: serve instead (below), as Axolotl's browser UI
          serve       a chat page at / and an OpenAI-compatible API at /v1 over base_model (+ the adapter), until Ctrl-C;
                      --port N (default 7860), --host ADDRESS (default 127.0.0.1; 0.0.0.0 opens it to the network)
          config-schema  print the JSON schema of the keys Axolotl.NET implements (no config file needed)
          download    axolotl download org/name [--revision R] [--repo-type model|dataset] [--include GLOB]: fetch a Hub
                      repo into the Hugging Face cache, print its snapshot folder
          fetch       axolotl fetch examples [--dest DIR]: copy Axolotl.NET's examples (default ./examples)
          mpi-check   mpirun -np N axolotl mpi-check: check that every MPI collective training uses works across the ranks

        train --nproc N starts N ranks on this machine under mpirun (data parallel; mpirun -np N axolotl train ... too).

        Any top-level config key can be overridden: --learning-rate 1e-4, --micro_batch_size=2, --no-train-on-inputs,
        --device cuda (train, evaluate and inference run on device: auto, cpu, cuda or cuda:N).
        """;

    public static int Run(string[] args)
    {
        ConfigureConsole();
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        var command = args[0];
        if (command == "config-schema")
        {
            Console.WriteLine(ConfigWriter.Schema().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        AxolotlConfig? config = null;
        try
        {
            if (command == "mpi-check") return MpiCheck();
            if (command == "train" && TakeNproc(ref args) is int nproc && nproc > 1 && !Distributed.MpiLaunch.Launched)
                return Distributed.MpiLaunch.RunUnderMpirun(nproc, args);
            if (command == "download") return HubCommands.Download(args[1..]);
            if (command == "fetch") return HubCommands.Fetch(args[1..]);
            if (command is not ("train" or "plan" or "validate" or "preprocess" or "merge-lora" or "export-gguf" or "evaluate" or "inference" or "serve"))
                throw new UserError($"unknown command '{command}'. Commands: train, plan, preprocess, validate, evaluate, merge-lora, export-gguf, inference, serve, download, fetch.");
            if (args.Length < 2 || args[1].StartsWith("--"))
                throw new UserError($"'{command}' needs a config file: axolotl {command} config.yml");
            var overrides = args[2..].ToList();
            if (command == "train" && overrides.Remove("--dry-run")) command = "plan";
            if (command == "inference" && overrides.Contains("--gradio")) command = "serve";
            (string? Host, int? Port)? serve = command == "serve" ? ServeCommand.TakeFlags(overrides) : null;
            int debugExamples = command == "preprocess" ? TakeDebugFlags(overrides) : 0;
            (string? Prompt, bool Chat, Dictionary<string, string> Sampling)? inference = command == "inference" ? TakeInferenceFlags(overrides) : null;
            string? ggufType = command switch { "merge-lora" => TakeFlag(overrides, "--gguf"), "export-gguf" => TakeFlag(overrides, "--outtype") ?? "f16", _ => null };
            string? ggufOut = command == "export-gguf" ? TakeFlag(overrides, "--out") : null;
            var ggufOutType = ggufType is null ? (Export.GgufOutType?)null : Export.GgufExport.ParseOutType(ggufType);
            config = ConfigLoader.Load(args[1], overrides);
            // Before anything runs: a mapped key changes what the user gets, so it is said up front.
            // inference's stdout carries only the answers.
            var notes = command == "inference" ? Console.Error : Console.Out;
            foreach (var warning in config.Warnings)
                if (command == "inference") notes.WriteLine($"warning: {warning}");
                else PrintWarning(warning);
            // validate only checks the config; the other commands need the model and data where they really are.
            if (command != "validate")
            {
                using var hub = Hub.HubClient.FromEnvironment();
                foreach (var note in HubCommands.WithProgress(hub, () => Hub.PathResolver.Resolve(config, hub))) notes.WriteLine(note);
            }
            return command switch
            {
                "validate" => Validate(config),
                "plan" => Plan(config),
                "preprocess" => Preprocess(config, debugExamples),
                "merge-lora" => MergeLora(config, ggufOutType),
                "export-gguf" => ExportGguf(config, ggufOutType!.Value, ggufOut),
                "evaluate" => Evaluate(config),
                "inference" => Inference(config, inference!.Value),
                "serve" => ServeCommand.Run(config, serve!.Value),
                _ => Train(config),
            };
        }
        catch (Exception e) when (UserMistake(e) is UserError user)
        {
            Console.Error.WriteLine($"error{RankTag()}: {user.Message}");
            Distributed.MpiLaunch.AbortAll(2);
            return 2;
        }
        catch (UnauthorizedAccessException e)
        {
            // A file or folder this account may not read or write: the user's to fix, whichever of the many it is.
            Console.Error.WriteLine($"error{RankTag()}: {e.Message} Check its permissions.");
            Distributed.MpiLaunch.AbortAll(2);
            return 2;
        }
        catch (Training.TrainingInterrupted e)
        {
            Console.Error.WriteLine(e.Message);
            return 130;
        }
        catch (Exception e)
        {
            var log = CrashLogPath(config);
            try { IO.AtomicFile.WriteAllText(log, e.ToString()); }
            catch (Exception) { log = "(could not write a log file)"; }
            Console.Error.WriteLine($"internal error{RankTag()}: {e.GetType().Name}: {e.Message.Split('\n')[0]}. This is a bug in Axolotl.NET; details: {log}");
            Distributed.MpiLaunch.AbortAll(1);
            return 1;
        }
    }

    /// <summary>" (rank K of N)" in a multi-process run, so the message says which rank failed; empty otherwise.</summary>
    static string RankTag() => Distributed.MpiLaunch.Current is { WorldSize: > 1 } world ? $" (rank {world.Rank} of {world.WorldSize})" : "";

    /// <summary>Removes <c>--nproc N</c> from train's arguments and returns N (null when absent).</summary>
    static int? TakeNproc(ref string[] args)
    {
        var rest = args.ToList();
        int? processes = null;
        for (int i = 0; i < rest.Count; i++)
        {
            if (rest[i] != "--nproc" && !rest[i].StartsWith("--nproc=")) continue;
            bool inline = rest[i].Contains('=');
            var value = inline ? rest[i][(rest[i].IndexOf('=') + 1)..] : i + 1 < rest.Count ? rest[i + 1] : "";
            if (!int.TryParse(value, out var n) || n < 1) throw new UserError($"--nproc needs a whole number of processes of at least 1, not '{value}'.");
            processes = n;
            rest.RemoveRange(i, inline ? 1 : 2);
            i--;
        }
        args = rest.ToArray();
        return processes;
    }

    /// <summary>Every collective on known values across the launched ranks; rank 0 reports.</summary>
    static int MpiCheck()
    {
        TorchRuntime.EnsureLoaded();
        var world = Distributed.MpiLaunch.World
            ?? throw new UserError("mpi-check runs under an MPI launcher with 2 or more ranks: mpirun -np 2 axolotl mpi-check");
        var lines = Distributed.MpiCheck.Run(world);
        if (world.Rank == 0) foreach (var line in lines) Console.WriteLine(line);
        return 0;
    }

    /// <summary>In output_dir when the config got that far, so the details sit beside the run they belong to.</summary>
    static string CrashLogPath(AxolotlConfig? config)
    {
        var name = $"axolotl-crash-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Environment.ProcessId}.log";
        if (config != null && Directory.Exists(config.OutputDir)) return Path.Combine(config.OutputDir, name);
        return Path.Combine(Path.GetTempPath(), name);
    }

    /// <summary>Removes preprocess's own flags (--debug, --debug-num-examples N) from the overrides; returns how many examples to show.</summary>
    static int TakeDebugFlags(List<string> args)
    {
        int shown = 0;
        for (int i = 0; i < args.Count; i++)
        {
            if (args[i] == "--debug") { shown = Math.Max(shown, 5); args.RemoveAt(i--); }
            else if (args[i].StartsWith("--debug-num-examples"))
            {
                var value = args[i].Contains('=') ? args[i][(args[i].IndexOf('=') + 1)..] : i + 1 < args.Count ? args[i + 1] : "";
                if (!int.TryParse(value, out shown) || shown < 0) throw new UserError($"--debug-num-examples needs a whole number, not '{value}'.");
                args.RemoveRange(i, args[i].Contains('=') ? 1 : 2);
                i--;
            }
        }
        return shown;
    }

    /// <summary>
    /// Tokenizes the datasets as train would and reports what came out; with --debug, shows examples token by token as
    /// token(label, id), masked tokens in red and trained ones in green, so a masking or template mistake is seen
    /// before any compute is spent.
    /// </summary>
    static int Preprocess(AxolotlConfig config, int debugExamples)
    {
        if (config.Streaming || config.PretrainingDataset.Count > 0)
        {
            // As Axolotl's preprocess: a stream is tokenized while training, so there is nothing to prepare or cache.
            Console.Error.WriteLine($"{(config.PretrainingDataset.Count > 0 ? "pretraining_dataset" : "a streaming dataset")} is streamed and tokenized while `axolotl train` runs, never cached; `preprocess` has nothing to prepare. Run `axolotl train` directly.");
            return 0;
        }
        Runtime.TorchRuntime.EnsureLoaded();
        var (data, tokenizer, _) = PreprocessRecipe.Run(config, new PlainReporter(), rebuild: true);
        // A preference pair is two examples: prompt + chosen, then prompt + rejected (the prompt masked in both).
        // A KTO example is prompt + completion, then a one-token row holding its label (shown in the heading instead).
        bool pairs = config.Rl != null, kto = config.Rl == RlMethod.Kto;
        foreach (var (example, index) in data.Examples.Take(pairs ? 2 * debugExamples : debugExamples).Select((e, i) => (e, i)))
        {
            if (kto && index % 2 == 1) continue;
            if (kto) Console.WriteLine($"Example {index / 2} ({(data.Examples[index + 1].InputIds[0] == 1 ? "desirable" : "undesirable")}), prompt + completion:");
            else if (pairs) Console.WriteLine(index % 2 == 0 ? $"Pair {index / 2}, prompt + chosen:" : $"Pair {index / 2}, prompt + rejected:");
            var line = new System.Text.StringBuilder();
            for (int i = 0; i < example.InputIds.Length; i++)
            {
                int id = example.InputIds[i], label = example.Labels[i];
                var token = (tokenizer?.Decode([id]) ?? id.ToString()).Replace("\n", "\\n").Replace("\t", "\\t");
                var color = label == Data.Example.IgnoreIndex ? "red" : label == id ? "green" : "yellow";
                line.Append($"[{color}]{Markup.Escape(token)}({label}, {id})[/] ");
            }
            AnsiConsole.MarkupLine(line.ToString().TrimEnd());
            Console.WriteLine($"Total input len: {example.InputIds.Length}");
            Console.WriteLine($"Count of labels: {example.TrainableTokens}");
            AnsiConsole.WriteLine();
        }
        return 0;
    }

    /// <summary>
    /// Piped or redirected output is never hard-wrapped (Spectre.Console would wrap at 80 columns, splitting
    /// <c>token(label, id)</c> pairs across lines) and carries no colour codes unless FORCE_COLOR asks for them.
    /// </summary>
    static void ConfigureConsole()
    {
        if (!Console.IsOutputRedirected) return;
        bool color = !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("FORCE_COLOR"));
        AnsiConsole.Console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = color ? AnsiSupport.Yes : AnsiSupport.No,
            ColorSystem = color ? ColorSystemSupport.Standard : ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(Console.Out),
        });
        AnsiConsole.Profile.Width = UnwrappedWidth;
    }

    /// <summary>Wide enough that no line of ours is wrapped.</summary>
    const int UnwrappedWidth = 1 << 20;

    static void PrintWarning(string message)
    {
        if (Console.IsOutputRedirected) Console.WriteLine($"warning: {message}");
        else AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(message)}");
    }

    /// <summary>The resolved values, each with where it came from: the file (line:col), a --flag, a derivation or the default.</summary>
    static int Validate(AxolotlConfig config)
    {
        var rows = ConfigLoader.KeyProperties(typeof(AxolotlConfig)).Select(p =>
        {
            var key = ConfigLoader.KeyOf(p);
            var text = p.GetValue(config) switch
            {
                null => "~",
                List<DatasetConfig> ds => string.Join("; ", ds.Select(d => $"{d.Path} ({d.Strategy ?? "pre-tokenized"}{(d.Variant != null ? ":" + d.Variant : "")})")),
                List<string> list => "[" + string.Join(", ", list) + "]",
                List<int> list => "[" + string.Join(", ", list) + "]",
                List<double> list => "[" + string.Join(", ", list.Select(d => d.ToString("R", System.Globalization.CultureInfo.InvariantCulture))) + "]",
                Enum e => ConfigLoader.Spelling(e),
                Dictionary<string, string> map => "{" + string.Join(", ", map.Select(kv => $"{kv.Key}: {kv.Value}")) + "}",
                bool b => b ? "true" : "false",
                double d => d.ToString("0.##########", System.Globalization.CultureInfo.InvariantCulture),
                var v => v.ToString() ?? "",
            };
            return (Key: key, Value: text, From: config.Sources.GetValueOrDefault(key, "default"));
        }).ToList();
        if (Console.IsOutputRedirected)
        {
            // Plain lines: a table would wrap at the 80 columns assumed for pipes.
            int width = rows.Max(r => r.Key.Length);
            foreach (var r in rows) Console.WriteLine($"{r.Key.PadRight(width)}  {r.Value}  ({r.From})");
        }
        else
        {
            var table = new Table().AddColumn("key").AddColumn("value").AddColumn("from");
            foreach (var r in rows) table.AddRow(Markup.Escape(r.Key), Markup.Escape(r.Value), Markup.Escape(r.From));
            AnsiConsole.Write(table);
        }
        Console.WriteLine($"{config.SourcePath}: valid" + (config.Warnings.Count > 0 ? $", with {config.Warnings.Count} warning(s) above." : "."));
        return 0;
    }

    /// <summary>Removes inference's own flags from the overrides (--lora-model-dir and --base-model are config keys).</summary>
    static (string? Prompt, bool Chat, Dictionary<string, string> Sampling) TakeInferenceFlags(List<string> args)
    {
        string? prompt = null;
        bool chat = false;
        var sampling = new Dictionary<string, string>();
        string[] samplingFlags = ["max-new-tokens", "temperature", "top-k", "top-p", "repetition-penalty"];
        for (int i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (arg == "--chat") { chat = true; args.RemoveAt(i--); continue; }
            var name = arg.StartsWith("--") ? arg[2..].Split('=')[0].Replace('_', '-') : "";
            if (name != "prompt" && !samplingFlags.Contains(name)) continue;
            bool inline = arg.Contains('=');
            if (!inline && i + 1 >= args.Count) throw new UserError($"--{name} needs a value.");
            var value = inline ? arg[(arg.IndexOf('=') + 1)..] : args[i + 1];
            if (name == "prompt") prompt = value;
            else sampling[name] = value;
            args.RemoveRange(i, inline ? 1 : 2);
            i--;
        }
        return (prompt, chat, sampling);
    }

    static int Inference(AxolotlConfig config, (string? Prompt, bool Chat, Dictionary<string, string> Sampling) flags)
    {
        var options = Axolotl.Inference.InferenceSetup.AxolotlGeneration(config);
        double Number(string flag)
        {
            if (!double.TryParse(flags.Sampling[flag], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) || v < 0)
                throw new UserError($"--{flag} needs a non-negative number, not '{flags.Sampling[flag]}'.");
            return v;
        }
        int Whole(string flag) => Number(flag) is var v && v == Math.Floor(v) ? (int)v : throw new UserError($"--{flag} needs a whole number, not '{flags.Sampling[flag]}'.");
        if (flags.Sampling.ContainsKey("max-new-tokens")) options = options with { MaxNewTokens = Whole("max-new-tokens") };
        if (flags.Sampling.ContainsKey("temperature"))
            options = Number("temperature") is var t && t == 0 ? options with { DoSample = false } : options with { Temperature = t };
        if (flags.Sampling.ContainsKey("top-k")) options = options with { TopK = Whole("top-k") };
        if (flags.Sampling.ContainsKey("top-p")) options = options with { TopP = Number("top-p") };
        if (flags.Sampling.ContainsKey("repetition-penalty")) options = options with { RepetitionPenalty = Number("repetition-penalty") };
        var settings = new InferenceSettings { Prompt = flags.Prompt, Chat = flags.Chat, Generation = options };
        // Progress lines go to stderr so stdout carries only the answers.
        InferenceRecipe.Run(config, settings, Console.In, Console.Out, Console.Error, !Console.IsInputRedirected, new StderrReporter());
        return 0;
    }

    static int Evaluate(AxolotlConfig config)
    {
        EvaluateRecipe.Run(config, new PlainReporter());
        return 0;
    }

    /// <summary>A user error, also when parallel work (tokenizing rows) wrapped it in an AggregateException.</summary>
    static UserError? UserMistake(Exception e) => e switch
    {
        UserError user => user,
        AggregateException many when many.Flatten().InnerExceptions is var inner && inner.All(x => x is UserError) => (UserError)inner[0],
        _ => null,
    };

    static int MergeLora(AxolotlConfig config, Export.GgufOutType? gguf)
    {
        MergeRecipe.Run(config, new PlainReporter(), gguf);
        return 0;
    }

    static int ExportGguf(AxolotlConfig config, Export.GgufOutType type, string? outPath)
    {
        Export.GgufExport.Run(config, type, outPath, new PlainReporter());
        return 0;
    }

    /// <summary>Removes a command's own <c>--name VALUE</c> (or <c>--name=VALUE</c>) from the overrides; returns the value.</summary>
    static string? TakeFlag(List<string> args, string name)
    {
        for (int i = 0; i < args.Count; i++)
        {
            if (args[i] == name)
            {
                if (i + 1 >= args.Count || args[i + 1].StartsWith("--")) throw new UserError($"{name} needs a value.");
                var value = args[i + 1];
                args.RemoveRange(i, 2);
                return value;
            }
            if (args[i].StartsWith(name + "="))
            {
                var value = args[i][(name.Length + 1)..];
                args.RemoveAt(i);
                return value;
            }
        }
        return null;
    }

    /// <summary>
    /// axolotl plan / train --dry-run: the predicted peak by part and the time per step, before the model is loaded.
    /// Where the peak depends on the rows' lengths (<see cref="Planning.MemoryPlan.ReadsData"/>) the data is prepared
    /// first, as preprocess does (and cached under dataset_prepared_path for the run); its messages go to stderr.
    /// </summary>
    static int Plan(AxolotlConfig config)
    {
        TorchRuntime.EnsureLoaded();
        var arch = ModelLoading.Architecture(config);
        Planning.RowLengths? rowLengths = null;
        if (Planning.MemoryPlan.ReadsData(config))
        {
            using var data = PreprocessRecipe.Run(config, new StderrReporter()).Data;
            rowLengths = Planning.RowLengths.Of(data.Examples);
        }
        double gflops = Training.Flops.MeasureMatmulGflops(Recipes.ModelLoading.ComputeType(config), 1024, 3).Max();
        Console.WriteLine(Planning.MemoryPlan.For(config, arch, rowLengths).Describe(gflops));
        var (budget, source) = Planning.MemoryBudget.For(config);
        if (budget > 0) Console.Error.WriteLine($"{source} {budget / 1073741824.0:F1} GiB");
        return 0;
    }

    static int Train(AxolotlConfig config)
    {
        TorchRuntime.EnsureLoaded();
        // Ctrl-C or a scheduler's SIGTERM: finish the step in flight, checkpoint, exit, instead of dying mid-write.
        using var stop = new CancellationTokenSource();
        void Stop(System.Runtime.InteropServices.PosixSignalContext context)
        {
            context.Cancel = true;
            if (stop.IsCancellationRequested) return;
            Console.Error.WriteLine("stopping after the current step, then saving a checkpoint (SIGKILL aborts at once)...");
            stop.Cancel();
        }
        using var sigint = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGINT, Stop);
        using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, Stop);
        var interactive = AnsiConsole.Profile.Capabilities.Interactive && !Console.IsOutputRedirected;
        if (!interactive)
        {
            FinetuneRecipe.Run(config, new PlainReporter(), stop.Token);
            return 0;
        }
        AnsiConsole.Progress()
            .AutoClear(false)
            .AutoRefresh(false) // no render thread during training: ProgressReporter redraws between steps
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx => FinetuneRecipe.Run(config, new ProgressReporter(ctx), stop.Token));
        return 0;
    }
}
