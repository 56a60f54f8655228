using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Runtime;
using Axolotl.Tokenization;
using Axolotl.Training;
using static TorchSharp.torch;

namespace Axolotl.Recipes;

/// <summary>Where the run saved its outputs, its trainer state (trainer_state.json) and what it trained on.</summary>
public sealed record FinetuneResult(string OutputDir, TrainerState State, DatasetSummary Data);

/// <summary>
/// <c>axolotl train</c>: config → tokenizer → data → model (+ adapter) → trainer → saved outputs. Each step is a call
/// into a layer; this file only wires them.
/// </summary>
internal static class FinetuneRecipe
{
    /// <param name="peakFlops">Peak FLOP/s in the compute dtype that the logged <c>mfu</c> is measured against (the
    /// benchmark passes its own); by default a quick matmul probe at the start of the run.</param>
    public static FinetuneResult Run(AxolotlConfig config, IRecipeReporter reporter, CancellationToken stop = default, double? peakFlops = null)
    {
        TorchRuntime.EnsureLoaded();
        // Several MPI ranks: all train, rank 0 alone speaks and writes (Distributed/DataParallelRun.cs).
        if (Distributed.MpiLaunch.World is { Rank: > 0 }) reporter = new QuietReporter();
        var parallel = Distributed.DataParallelRun.Start(config, reporter.Info);
        // Read the architecture first: a wrong model path should fail before minutes of tokenization.
        var architecture = ModelLoading.Architecture(config);
        // A run that will not fit is refused up front rather than killed for memory an hour in; where the peak depends on
        // the rows' lengths (unpacked rows, padded per micro-batch), once the data is read.
        if (!Planning.MemoryPlan.ReadsData(config)) RefuseIfTooLarge(config, architecture, null, null);
        bool outputDirExisted = Directory.Exists(config.OutputDir);
        var outputDir = PrepareOutputDir(config.OutputDir);
        manual_seed(config.Seed);
        // A GPU that is not there should fail before minutes of tokenization too.
        var device = ModelLoading.ResolveDevice(config);

        // pretraining_dataset and streamed SFT datasets are read while training runs; nothing is prepared (or cached) before.
        bool streaming = config.Streaming || config.PretrainingDataset.Count > 0;
        var (data, tokenizer, tokenizerDir) = streaming
            ? (new PreparedDataset([], 0, 0, 0), ModelLoading.LoadTokenizer(config), config.TokenizerFolder())
            : Distributed.DataParallelRun.RankZeroFirst(parallel, () => PreprocessRecipe.Run(config, reporter));
        if (Planning.MemoryPlan.ReadsData(config) && data.Examples.Count > 0)
            RefuseIfTooLarge(config, architecture, Planning.RowLengths.Of(data.Examples), outputDirExisted ? null : outputDir);
        // A cache hit skips the tokenizer; training still wants it (pad id, embeddings for added tokens, saved files).
        tokenizer ??= ModelLoading.LoadTokenizerIfPresent(config);

        var computeType = ModelLoading.ComputeType(config, device);
        bool bf16 = computeType == ScalarType.BFloat16;
        // Weights live in the compute dtype; a full fine-tune's fp32 master copies live in the optimizer (Optimizers.cs),
        // and LoRA's adapter weights are fp32 themselves.
        var weightType = computeType;
        int fileVocab = architecture.VocabSize;
        // A reward model's config.json names the pad token its head reads up to, as TRL sets it.
        var built = Training.Objectives.RewardTraining.Architecture(ModelLoading.WithTokenizerVocab(architecture, config, tokenizer), config,
            Training.Objectives.RewardTraining.PadTokenId(config, tokenizer));
        var model = LoadModel(config, built, weightType, computeType, reporter);
        if (model.Config.VocabSize > fileVocab)
        {
            reporter.Info($"Embeddings resized from {fileVocab} to {model.Config.VocabSize} rows for the config's tokens (new rows: normal(0, {model.Config.InitializerRange}), as transformers' resize_token_embeddings).");
            if (config.Adapter != null && !(config.LoraModulesToSave is { } saved && ConfigTokens.EmbeddingModules.All(saved.Contains)))
                reporter.Warn("the new tokens' embeddings are not trained by the adapter (set lora_modules_to_save: [embed_tokens, lm_head] to train them).");
        }
        int maxId = data.Examples.Count == 0 ? 0 : data.MaxTokenId;
        if (maxId >= model.Config.VocabSize)
            throw new UserError($"the data holds token id {maxId}, beyond the model's vocab_size {model.Config.VocabSize}.");

        var resumeFrom = ResolveCheckpoint(config, reporter);
        // LoftQ starts from the full-precision weights (read again for layers quantized at load).
        using var loftq = config.LoftqBits is int loftqBits && resumeFrom == null
            ? LoftQ.Prepare(model, NewLoraSettings(config, model), loftqBits, computeAdapter: true, LoftQ.WeightsIn(config.BaseModel), reporter.Info) : null;
        ModelLoading.QuantizeAsConfigured(model, config, reporter);
        LoraSettings? lora = null;
        if (config.HasLora)
        {
            manual_seed(config.Seed);
            if (resumeFrom != null)
                lora = Lora.Load(model, resumeFrom);
            else if (config.LoraModelDir != null)
            {
                lora = Lora.Load(model, config.LoraModelDir);
                reporter.Info($"LoRA: loaded adapter from {config.LoraModelDir} (r {lora.Rank}, alpha {lora.Alpha}; its adapter_config.json wins over lora_* keys).");
            }
            else
            {
                lora = NewLoraSettings(config, model);
                // TRL's reward and PRM trainers turn dropout off, LoRA's too; adapter_config.json keeps lora_dropout.
                var wrapped = Lora.Apply(model, Training.Objectives.RewardTraining.Applies(config) ? lora with { Dropout = 0 } : lora);
                loftq?.CopyInto(model);
                reporter.Info($"{(lora.UseDora ? "DoRA" : "LoRA")}: r {lora.Rank}, alpha {lora.Alpha}{(lora.UseRsLora ? " (rsLoRA scale alpha/sqrt(r))" : "")} on {wrapped.Count} layers ({string.Join(", ", lora.TargetModules)})" +
                              (lora.ModulesToSave.Count > 0 ? $"; trained in full: {string.Join(", ", lora.ModulesToSave)}." : "."));
            }
        }
        else if (resumeFrom != null) model.LoadWeights(resumeFrom);
        var partialTraining = new List<ITrainerCallback>();
        if (config.UnfrozenParameters is { Count: > 0 } unfrozen && UnfrozenParameters.Apply(model, unfrozen, reporter.Info) is { } rowRanges)
            partialTraining.Add(rowRanges);
        if (config is { LisaNLayers: int lisaLayers, LisaStepInterval: int lisaInterval })
            partialTraining.Add(new LisaCallback(lisaLayers, lisaInterval, config.LisaLayersAttribute, unchecked((uint)config.Seed), reporter.Info));
        model.model.GradientCheckpointing = config.RecomputesLayers;
        ModelLoading.Place(model, device, reporter);
        reporter.Info($"Precision: {(!bf16 ? "fp32" : lora != null ? "bf16 compute, fp32 adapter weights" : config.PureBf16 ? "bf16 weights, compute, gradients and optimizer state" : "bf16 weights and compute, fp32 master weights and optimizer state")} ({(config.PureBf16 ? "bfloat16: true" : $"bf16: {ConfigLoader.Spelling(config.Bf16)}")}).");

        var packing = PackingOptions.For(config);
        var options = new TrainingOptions
        {
            MicroBatchSize = config.MicroBatchSize,
            GradientAccumulationSteps = config.GradientAccumulationSteps,
            NumEpochs = config.NumEpochs,
            MaxSteps = config.MaxSteps,
            LearningRate = config.LearningRate!.Value,
            LrScheduler = config.LrScheduler,
            Optimizer = config.Optimizer,
            CosineMinLrRatio = config.CosineMinLrRatio,
            CosineConstantLrRatio = config.CosineConstantLrRatio,
            LrQuadraticWarmup = config.LrQuadraticWarmup == true,
            LrSchedulerKwargs = config.LrSchedulerKwargs,
            JaggedRestarts = Training.Relora.JaggedRestartsOf(config),
            WarmupSteps = config.WarmupSteps,
            WarmupRatio = config.WarmupRatio,
            WeightDecay = config.WeightDecay,
            MaxGradNorm = config.MaxGradNorm ?? 1.0,
            Beta1 = config.AdamBeta1 ?? 0.9,
            Beta2 = config.AdamBeta2 ?? 0.999,
            Epsilon = config.AdamEpsilon ?? 1e-8,
            Fp32Masters = !config.PureBf16,
            LoggingSteps = config.LoggingSteps,
            Seed = config.Seed,
            PadTokenId = tokenizer?.PadTokenId ?? tokenizer?.EosTokenId ?? 0,
            EvalSteps = config.EvalSteps,
            EvalBatchSize = config.EvalBatchSize,
            EvalsPerEpoch = (config.EvalSteps != null ? null : config.EvalsPerEpoch) ?? (config.EvalStrategy == IntervalStrategy.Epoch ? 1 : null),
            PeakFlops = peakFlops ?? MeasurePeak(computeType, device, reporter),
            EarlyStoppingPatience = config.EarlyStoppingPatience,
            LossWatchdogThreshold = config.LossWatchdogThreshold,
            CurriculumSampling = config.CurriculumSampling,
            LossWatchdogPatience = config.LossWatchdogPatience ?? 3,
            MetricForBestModel = config.MetricForBestModel
                ?? (config.LoadBestModelAtEnd || config.EarlyStoppingPatience != null ? "eval_loss" : null),
            GreaterIsBetter = config.GreaterIsBetter ?? false,
            LoraPlusLrRatio = lora != null ? config.LoraplusLrRatio : null,
            Packing = config.SamplePacking ? packing : null,
            EvalPacking = config.EvalSamplePacking == true ? packing : null,
            // Axolotl's collator pads to a multiple of 64 without pad_to_sequence_len; here it also bounds the shapes a run
            // sees, and with them libtorch's per-shape caches (unbucketed, the heap grew ~9 MiB a step).
            PadToMultipleOf = !config.SamplePacking && config.PadToSequenceLen == true ? PackingOptions.PadMultiple(config.SequenceLen) : 64,
            Collectives = (Distributed.ICollectives?)parallel ?? Distributed.SingleProcess.Instance,
        };
        PretrainingStream? stream = null;
        if (streaming)
        {
            var streamTokenizer = tokenizer!;
            stream = PretrainingStreams.ForConfig(config, () => streamTokenizer, options.PadTokenId);
            if (resumeFrom != null) stream.ResumeFrom(resumeFrom);
            reporter.Info(PretrainingStreams.Describe(config));
        }
        // Weights and the resolved config go together into output_dir and every checkpoint, so each can be re-run.
        // A full fine-tune of a sharded base keeps its shard layout.
        var layout = lora == null && !config.RandomInitWeights ? ShardedSafetensors.LayoutOf(config.BaseModel) : null;
        void SaveWeights(string dir)
        {
            if (lora != null) Lora.Save(model, lora, dir, config.BaseModelRepoId ?? config.BaseModel);
            else model.SavePretrained(dir, bf16 ? ScalarType.BFloat16 : ScalarType.Float32, layout);
            // ReLoRA changes the base weights: a checkpoint carries them, so a resume restores them.
            if (lora != null && config.Relora) Relora.SaveBases(model, dir);
            AtomicFile.WriteAllText(Path.Combine(dir, ConfigWriter.FileName), ConfigWriter.ToYaml(config));
            // Where the stream stands, so a resume from this folder re-reads only the current buffer.
            stream?.SavePosition(dir);
        }
        var checkpoints = config.SaveStrategy == IntervalStrategy.No ? null : new CheckpointOptions(outputDir, SaveWeights)
        {
            SaveSteps = config.SaveSteps ?? 500,
            // A fraction derived from saves_per_epoch (as Axolotl derives it) is a save_steps like any other.
            SavesPerEpoch = (config.SaveSteps != null ? null : config.SavesPerEpoch) ?? (config.SaveStrategy == IntervalStrategy.Epoch ? 1 : null),
            SaveTotalLimit = config.SaveTotalLimit,
            SaveOnlyModel = config.SaveOnlyModel,
            LoadWeights = config.LoadBestModelAtEnd ? dir => LoadTrainedWeights(model, dir, lora != null) : null,
        };
        var restored = resumeFrom != null && File.Exists(Path.Combine(resumeFrom, TrainerState.FileName)) ? TrainerState.Load(resumeFrom).LogHistory : [];
        TrainerState state;
        using var trackers = new RunTrackers();
        using (var metrics = Distributed.DataParallelRun.WritesOutputs(parallel)
                   ? new MetricsLog(outputDir, restored, reporter) { TensorBoard = config.UseTensorboard ? new TensorBoardWriter(outputDir) : null } : null)
        {
            ITrainingObjective? objective = null;
            IBatchSource? pairs = null, evalPairs = null;
            if (config.Rl != null)
            {
                if (parallel != null) throw new UserError($"rl: {ConfigLoader.Spelling(config.Rl.Value)} across processes is not built yet; run preference training in one process (without --nproc or mpirun).");
                // Preference training: pairs as [chosen; rejected] batches, TRL's loss against a reference.
                (pairs, evalPairs) = Training.Objectives.PreferenceTraining.Batches(config, data, options.PadTokenId);
                objective = Training.Objectives.PreferenceTraining.Objective(config, model, lora != null,
                    evalPairs is null ? [pairs] : [pairs, evalPairs], reporter.Info);
            }
            else if (Training.Objectives.RewardTraining.Applies(config))
            {
                if (parallel != null) throw new UserError($"{(config.RewardModel ? "reward_model" : "process_reward_model")} across processes is not built yet; run it in one process (without --nproc or mpirun).");
                (pairs, evalPairs) = Training.Objectives.RewardTraining.Batches(config, data, options);
                objective = Training.Objectives.RewardTraining.Objective(config, model, options.PadTokenId);
                reporter.Info(Training.Objectives.RewardTraining.Describe(config));
            }
            var trainer = new Trainer(model, options, (ITrainingObserver?)metrics ?? reporter, checkpoints) { Objective = objective ?? new CrossEntropyObjective(model) };
            if (parallel != null) trainer.Callbacks.Add(new Distributed.DataParallelCallback(parallel.World, stop, reporter.Info));
            if (metrics != null) trackers.AddFor(config, outputDir, data.Eval, tokenizer, metrics.TensorBoard, reporter);
            trainer.Callbacks.AddRange(trackers.Callbacks);
            if (Relora.CallbackFor(config, resumeFrom, reporter.Info) is { } relora) trainer.Callbacks.Add(relora);
            trainer.Callbacks.AddRange(partialTraining);
            state = pairs != null ? trainer.Train(pairs, evalPairs, resumeFrom, stop)
                : stream != null ? trainer.Train(stream, resumeFrom, stop)
                : parallel != null ? trainer.Train(Distributed.RankBatches.Training(data.Examples, options, parallel),
                                                   config.EvalStrategy == IntervalStrategy.No ? null : Distributed.RankBatches.Evaluation(data.Eval, options, parallel), resumeFrom, stop)
                : trainer.Train(data.Examples, resumeFrom, config.EvalStrategy == IntervalStrategy.No ? null : data.Eval, stop);
            // The summary entry is added without being reported as a log.
            metrics?.Append(state.LogHistory[^1]);
        }
        if (!Distributed.DataParallelRun.WritesOutputs(parallel)) return new FinetuneResult(outputDir, state, DatasetSummary.Of(data));

        foreach (var (reason, count, first) in stream?.SkippedRows ?? [])
            reporter.Warn($"skipped {count} bad rows of the stream ({reason}; bad_rows: skip), the first: {first}");
        if (config.Relora && lora != null)
        {
            // As Axolotl: a ReLoRA run's result is the full model with the last LoRA merged in (the adapter alone
            // would need the merged base of every restart).
            Lora.MergeAndUnload(model);
            lora = null;
        }
        SaveWeights(outputDir);
        state.Save(outputDir);
        ModelCard.Write(outputDir, config, state);
        LossCurve.Write(outputDir, state.LogHistory, $"{Path.GetFileName(outputDir)}: {config.BaseModelRepoId ?? config.BaseModel}");
        if (tokenizer != null) TokenizerFiles.CopyWithConfigChanges(tokenizerDir, outputDir, config, tokenizer);
        reporter.Info($"Saved {(lora != null ? "adapter" : "model")} to {outputDir}");
        trackers.Finish(outputDir);
        return new FinetuneResult(outputDir, state, DatasetSummary.Of(data));
    }

    /// <summary>A new adapter as the lora_* keys describe it.</summary>
    static LoraSettings NewLoraSettings(AxolotlConfig config, CausalLM model)
    {
        var targets = new List<string>(config.LoraTargetModules ?? []);
        if (config.LoraTargetLinear) targets.AddRange(Lora.LinearModuleNames(model));
        return new LoraSettings
        {
            Rank = config.LoraR!.Value, Alpha = config.LoraAlpha!.Value, Dropout = config.LoraDropout,
            TargetModules = targets.Distinct().ToList(),
            UseDora = config.PeftUseDora,
            UseRsLora = config.PeftUseRslora,
            ModulesToSave = Training.Objectives.RewardTraining.ModulesToSave(config),
            LayersToTransform = config.PeftLayersToTransform,
            LoftqBits = config.LoftqBits,
            TaskType = Training.Objectives.RewardTraining.PeftTaskType(config),
        };
    }

    /// <summary>Ranks other than 0 train silently: their figures are rank 0's.</summary>
    sealed class QuietReporter : IRecipeReporter;

    /// <summary>
    /// Copies the trained weights saved in a checkpoint back into the model (load_best_model_at_end): the adapter's
    /// tensors by PEFT key, or the whole model.
    /// </summary>
    static void LoadTrainedWeights(CausalLM model, string dir, bool adapter)
    {
        if (!adapter) { model.LoadWeights(dir); return; }
        var file = SafetensorsFile.Open(Path.Combine(dir, Lora.WeightsFile));
        using var _ = no_grad();
        foreach (var (name, parameter) in model.named_parameters().Where(p => p.parameter.requires_grad))
        {
            var key = file.Entries.ContainsKey(name) ? name : "base_model.model." + name;
            if (!file.Entries.ContainsKey(key)) throw new UserError($"{file.Path}: the checkpoint has no tensor for '{name}'.");
            using var loaded = file.Read(key);
            parameter.copy_(loaded);
        }
    }

    /// <param name="createdOutputDir">output_dir when this run created it: removed again if still empty, so a refused run leaves nothing.</param>
    static void RefuseIfTooLarge(AxolotlConfig config, DecoderConfig architecture, Planning.RowLengths? rowLengths, string? createdOutputDir)
    {
        if (Planning.MemoryPlan.Refusal(config, architecture, Planning.MemoryBudget.For(config), rowLengths) is not { } refusal) return;
        if (createdOutputDir is not null && Directory.Exists(createdOutputDir) && !Directory.EnumerateFileSystemEntries(createdOutputDir).Any())
            Directory.Delete(createdOutputDir);
        throw new UserError(refusal);
    }

    /// <summary>resume_from_checkpoint, or with auto_resume_from_checkpoints the newest complete checkpoint in output_dir.</summary>
    static string? ResolveCheckpoint(AxolotlConfig config, IRecipeReporter reporter)
    {
        var checkpoint = config.ResumeFromCheckpoint;
        if (checkpoint == null && config.AutoResumeFromCheckpoints)
            checkpoint = CheckpointStore.Complete(config.OutputDir).Select(c => c.Path).LastOrDefault();
        if (checkpoint != null) reporter.Info($"Resuming from {checkpoint}.");
        return checkpoint;
    }

    /// <summary>
    /// A quick peak for the logged mfu: the fastest of five 1024³ matmuls (a few milliseconds each in bf16); the fastest,
    /// because a probe this short is easily slowed by anything else the machine does at start-up.
    /// </summary>
    static double MeasurePeak(ScalarType computeType, Device device, IRecipeReporter reporter)
    {
        var gflops = Flops.MeasureMatmulGflops(computeType, 1024, 5, device).Max();
        reporter.Info($"Matmul peak ({(computeType == ScalarType.BFloat16 ? "bf16" : "fp32")}, 1024³): {gflops:F0} GFLOP/s; the logged mfu is measured against it.");
        return gflops * 1e9;
    }

    internal static CausalLM LoadModel(AxolotlConfig config, DecoderConfig architecture, ScalarType weightType, ScalarType computeType, IRecipeReporter reporter)
    {
        if (config.RandomInitWeights)
        {
            var model = ModelLoading.RandomBase(config, architecture, weightType, computeType);
            reporter.Info($"Model: {architecture.ModelType} architecture with random weights (reinit_weights), {model.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(model):N0} parameters.");
            return model;
        }
        var loaded = ModelLoading.LoadBase(config, architecture, weightType, computeType);
        reporter.Info($"Model: {config.BaseModel} ({architecture.ModelType}, {loaded.parameters().Sum(p => p.numel()) + Quantization.Quantizer.QuantizedWeightCount(loaded):N0} parameters).");
        return loaded;
    }

    static string PrepareOutputDir(string dir)
    {
        try
        {
            Directory.CreateDirectory(dir);
            var probe = Path.Combine(dir, $".write-test-{Environment.ProcessId}");
            File.WriteAllText(probe, "");
            File.Delete(probe);
            return Path.GetFullPath(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UserError($"output_dir '{dir}' is not writable ({e.Message}).");
        }
    }
}
