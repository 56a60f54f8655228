using Axolotl.Hub;
using Spectre.Console;

namespace Axolotl.Cli;

/// <summary>`axolotl download` and `axolotl fetch`, and the progress display of every Hub download.</summary>
static class HubCommands
{
    /// <summary>axolotl download repo_id [--revision R] [--repo-type model|dataset] [--include GLOB ...]: prints the snapshot folder.</summary>
    public static int Download(string[] args)
    {
        string? repoId = null, revision = null, repoType = "model";
        var include = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            var (name, value) = args[i].StartsWith("--") && args[i].Contains('=') ? (args[i][..args[i].IndexOf('=')], args[i][(args[i].IndexOf('=') + 1)..]) : (args[i], null);
            string Value() => value ?? (i + 1 < args.Length ? args[++i] : throw new UserError($"{name} needs a value."));
            switch (name)
            {
                case "--revision": revision = Value(); break;
                case "--repo-type": repoType = Value(); break;
                case "--include": include.Add(Value()); break;
                case var flag when flag.StartsWith("--"):
                    throw new UserError($"download: unknown option '{flag}' (known: --revision, --repo-type, --include).");
                default:
                    if (repoId != null) throw new UserError($"download takes one repo id, got '{repoId}' and '{name}'.");
                    repoId = name;
                    break;
            }
        }
        if (repoId == null) throw new UserError("download needs a repo id: axolotl download org/name [--revision R] [--repo-type model|dataset] [--include GLOB].");
        if (repoType is not ("model" or "dataset")) throw new UserError($"--repo-type '{repoType}': model or dataset.");
        if (!HfCache.LooksLikeRepoId(repoId)) throw new UserError($"'{repoId}' is not a Hub repo id (org/name).");
        using var hub = HubClient.FromEnvironment();
        // Offline, what the cache holds is the answer, as huggingface_hub's snapshot_download gives it.
        if (hub.Cache.Offline && hub.Cache.Resolve(repoId, repoType, revision, out _) is { } cached)
        {
            Console.WriteLine(cached);
            return 0;
        }
        var want = repoType == "dataset" ? HubWant.Dataset : HubWant.Everything;
        var label = repoType == "dataset" ? $"dataset {repoId}" : repoId;
        var snapshot = WithProgress(hub, () => include.Count == 0
            ? hub.Download(repoId, repoType, revision, want)
            : hub.Download(repoId, repoType, revision, (files, _) =>
            {
                var match = HubFiles.Globs(include);
                var chosen = files.Where(match).ToList();
                return chosen.Count > 0 ? chosen : throw new UserError($"no file of {label} matches --include {string.Join(" ", include)}.");
            }));
        Console.WriteLine(snapshot);
        return 0;
    }

    /// <summary>
    /// Axolotl's `fetch examples|deepspeed_configs [--dest DIR]`. Axolotl's own examples are configs for its model zoo
    /// on GPUs; what is useful here, and runs offline, is this project's examples, which ship with the CLI.
    /// </summary>
    public static int Fetch(string[] args)
    {
        string? what = null, dest = null;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--dest") dest = i + 1 < args.Length ? args[++i] : throw new UserError("--dest needs a folder.");
            else if (args[i].StartsWith("--dest=")) dest = args[i]["--dest=".Length..];
            else if (what == null && !args[i].StartsWith("--")) what = args[i];
            else throw new UserError($"fetch: unexpected '{args[i]}'; usage: axolotl fetch examples [--dest DIR].");
        }
        if (what == "deepspeed_configs") return FetchDeepSpeedConfigs(dest ?? "deepspeed_configs");
        if (what != "examples") throw new UserError("fetch needs what to fetch: axolotl fetch examples [--dest DIR].");
        var source = Path.Combine(AppContext.BaseDirectory, "examples");
        if (!Directory.Exists(source)) throw new UserError($"this build of axolotl has no examples folder ({source}).");
        dest ??= "examples";
        int copied = 0, kept = 0;
        foreach (var file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(dest, Path.GetRelativePath(source, file));
            // The user's edits to an earlier copy win; only what is missing is filled in.
            if (File.Exists(target)) { kept++; continue; }
            Axolotl.IO.AtomicFile.Write(target, s => { using var f = File.OpenRead(file); f.CopyTo(s); });
            copied++;
        }
        Console.WriteLine($"copied {copied} files of Axolotl.NET's examples to {Path.GetFullPath(dest)}" + (kept > 0 ? $" ({kept} already there, left as they are)" : "") +
            $"; the configs name paths as examples/..., so run them from the folder that holds examples/: axolotl train {Path.Combine(dest, "quickstart.yml")}");
        return 0;
    }

    /// <summary>
    /// zero1.json and zero2.json, the ZeRO stages built here, as the files a config's <c>deepspeed:</c> names. Only the stage
    /// is read; batch sizes and precision come from the Axolotl config (DeepSpeed's "auto"). Stage 3 is not built, so no
    /// zero3.json is written.
    /// </summary>
    static int FetchDeepSpeedConfigs(string dest)
    {
        foreach (int stage in new[] { 1, 2 })
        {
            var target = Path.Combine(dest, $"zero{stage}.json");
            if (File.Exists(target)) continue;
            Axolotl.IO.AtomicFile.WriteAllText(target, $$"""
                {
                  "zero_optimization": { "stage": {{stage}} },
                  "train_micro_batch_size_per_gpu": "auto",
                  "gradient_accumulation_steps": "auto",
                  "bf16": { "enabled": "auto" }
                }

                """);
        }
        Console.WriteLine($"wrote zero1.json and zero2.json to {Path.GetFullPath(dest)} (files already there are left as they are); " +
                          $"train with deepspeed: {Path.Combine(dest, "zero2.json")} under mpirun -np N, or axolotl train config.yml --nproc N.");
        return 0;
    }

    /// <summary>Runs <paramref name="work"/> with one bar per downloaded file on a terminal, one line per file otherwise.</summary>
    public static T WithProgress<T>(HubClient hub, Func<T> work)
    {
        if (!AnsiConsole.Profile.Capabilities.Interactive || Console.IsOutputRedirected)
        {
            string? last = null;
            hub.Progress = p =>
            {
                if (p.Repo + "/" + p.File == last) return;
                last = p.Repo + "/" + p.File;
                Console.Error.WriteLine($"downloading {p.Repo} {p.File}" + (p.Total is long t ? $" ({t / 1e6:F1} MB)" : "") + (p.Done > 0 ? $", resuming at {p.Done / 1e6:F1} MB" : ""));
            };
            try { return work(); }
            finally { hub.Progress = null; }
        }
        // The live display starts with the first byte, so that a run that downloads nothing prints nothing.
        using var firstBytes = new ManualResetEventSlim();
        using var displayReady = new ManualResetEventSlim();
        ProgressContext? context = null;
        var tasks = new Dictionary<string, ProgressTask>();
        hub.Progress = p =>
        {
            firstBytes.Set();
            displayReady.Wait();
            var key = p.Repo + "/" + p.File;
            if (!tasks.TryGetValue(key, out var task))
                tasks[key] = task = context!.AddTask(Markup.Escape($"{p.Repo} {p.File}"), maxValue: p.Total ?? double.MaxValue);
            if (p.Total is long total) task.MaxValue = total;
            task.Value = p.Done;
        };
        try
        {
            var worker = Task.Run(work);
            if (WaitHandle.WaitAny([((IAsyncResult)worker).AsyncWaitHandle, firstBytes.WaitHandle]) == 1)
                AnsiConsole.Progress().AutoClear(false)
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        context = ctx;
                        displayReady.Set();
                        ((IAsyncResult)worker).AsyncWaitHandle.WaitOne();
                    });
            return worker.GetAwaiter().GetResult();
        }
        finally { hub.Progress = null; }
    }
}
