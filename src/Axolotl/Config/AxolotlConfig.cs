namespace Axolotl.Config;

// The config schema: one property per Axolotl key that Axolotl.NET implements, named as the key in PascalCase (the
// loader maps snake_case to it). Defaults are Axolotl's. Every other Axolotl key is known by name in AxolotlKeys and is
// either warned about or refused (ConfigLoader).

/// <summary>The Axolotl spelling of a key (property) or of a fixed-set value (enum member) that snake_case of the C# name
/// does not give.</summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
sealed class AxolotlKeyAttribute(string key) : Attribute
{
    public string Key => key;
}

/// <summary>train_on_eos / train_on_eot: which end-of-sequence (or end-of-turn) tokens are trained on: every one, those of
/// trained turns, only the last, or none.</summary>
public enum TrainOnEnd { All, Turn, Last, None }

/// <summary>One entry of <c>datasets:</c>.</summary>
public sealed class DatasetConfig
{
    public string Path { get; set; } = "";
    /// <summary>Prompt strategy (alpaca, completion); unset for pre-tokenized rows.</summary>
    public string? Type { get; set; }
    /// <summary>json, csv, parquet, text; inferred from the extension when unset.</summary>
    public string? DsType { get; set; }
    public string? Split { get; set; }
    /// <summary>The column holding the text for <c>type: completion</c>.</summary>
    public string? Field { get; set; }
    /// <summary>The Hub revision (branch, tag or commit) when <c>path</c> is a dataset repo id.</summary>
    public string? Revision { get; set; }
    /// <summary>Files to read (relative to a dataset folder, or on their own, read as json).</summary>
    public List<string>? DataFiles { get; set; }
    /// <summary>A Hub dataset's configuration: the folder of that name inside the dataset.</summary>
    public string? Name { get; set; }
    /// <summary>Keep one of <c>shards</c> contiguous parts (<c>shards_idx</c>, default 0) of the rows shuffled as datasets shuffles them with <c>seed</c>.</summary>
    public int? Shards { get; set; }
    public int? ShardsIdx { get; set; }
    /// <summary>alpaca_chat's prompt style (chat, chatml, instruct, phi).</summary>
    public string? Conversation { get; set; }
    // chat_template: which template (overriding the top-level keys), where the messages are and what their fields mean
    public string? ChatTemplate { get; set; }
    public string? ChatTemplateJinja { get; set; }
    public string? FieldMessages { get; set; }
    /// <summary>Preference types: the chosen and rejected fields (chat_template.default, argilla_chat).</summary>
    public string? FieldChosen { get; set; }
    public string? FieldRejected { get; set; }
    public Dictionary<string, string>? MessagePropertyMappings { get; set; }
    public string? MessageFieldRole { get; set; }
    public string? MessageFieldContent { get; set; }
    public string? MessageFieldTraining { get; set; }
    public string? MessageFieldTrainingDetail { get; set; }
    public string? FieldSystem { get; set; }
    public string? FieldTools { get; set; }
    /// <summary>{target role: [source roles]}; unset: human/user → user, gpt/assistant → assistant, system, tool.</summary>
    public Dictionary<string, List<string>>? Roles { get; set; }
    public List<string>? RolesToTrain { get; set; }
    /// <summary>Unset is turn.</summary>
    public TrainOnEnd? TrainOnEos { get; set; }
    /// <summary>Unset follows train_on_eos.</summary>
    public TrainOnEnd? TrainOnEot { get; set; }
    public bool DropSystemMessage { get; set; }
    /// <summary>Move &lt;think&gt;...&lt;/think&gt; (and Axolotl's other reasoning tags) out of assistant content into the thinking key.</summary>
    public bool SplitThinking { get; set; }
    /// <summary>The message key the template reads the reasoning from (default reasoning_content).</summary>
    public string? TemplateThinkingKey { get; set; }
    /// <summary>Accepted as Axolotl accepts it; it has no effect there (see ConfigLoader's warning).</summary>
    public string? FieldThinking { get; set; }
    /// <summary>stepwise_supervised: appended to every step; its last token carries the step's label (default "\n").</summary>
    public string? StepSeparator { get; set; }
    /// <summary>stepwise_supervised: completion tokens kept (steps and separators), before the prompt is put in front.</summary>
    public int? MaxCompletionLength { get; set; }
    /// <summary>stepwise_supervised: only the last step is labelled.</summary>
    public bool TrainOnLastStepOnly { get; set; }
    /// <summary>pretraining_dataset only: the column holding the text (Axolotl's default "text").</summary>
    public string? TextColumn { get; set; }
    /// <summary>pretraining_dataset only: rows left out at the start of the stream.</summary>
    public int? Skip { get; set; }
    /// <summary><c>type:</c> given as a mapping (Axolotl's user_defined format).</summary>
    public UserDefinedFormat? UserDefined { get; internal set; }
    /// <summary>Where this entry sits in the YAML file, for messages about its rows.</summary>
    internal string Origin { get; set; } = "";
    /// <summary><c>type</c> split as Axolotl splits it: "alpaca:chat" is strategy alpaca, prompt style chat.</summary>
    public string? Strategy { get; internal set; }
    public string? Variant { get; internal set; }
}

/// <summary>Axolotl's <c>type: {field_instruction: ..., format: ...}</c>, with its defaults.</summary>
public sealed record UserDefinedFormat
{
    public string SystemPrompt { get; init; } = "";
    public string FieldSystem { get; init; } = "system";
    public string FieldInstruction { get; init; } = "instruction";
    public string FieldInput { get; init; } = "input";
    public string FieldOutput { get; init; } = "output";
    public string Format { get; init; } = "{instruction} {input} ";
    public string NoInputFormat { get; init; } = "{instruction} ";
    public string SystemFormat { get; init; } = "{system}";
    // Preference types' user_defined.default (DPO, KTO), with Axolotl's defaults.
    public string FieldPrompt { get; init; } = "prompt";
    public string FieldChosen { get; init; } = "chosen";
    public string FieldRejected { get; init; } = "rejected";
    public string PromptFormat { get; init; } = "{prompt}";
    public string ChosenFormat { get; init; } = "{chosen}";
    public string RejectedFormat { get; init; } = "{rejected}";
}

/// <summary>transformers' IntervalStrategy (save_strategy, eval_strategy): written in configs as no, steps, epoch.</summary>
public enum IntervalStrategy { No, Steps, Epoch }

/// <summary>gradient_checkpointing: true recomputes each decoder layer in backward instead of keeping its activations;
/// Axolotl's offload and offload_disk also move the kept layer inputs off the GPU (here they recompute as true does).</summary>
public enum GradientCheckpointingMode { False, True, Offload, OffloadDisk }

/// <summary>Axolotl's adapter key; unset is a full fine-tune. llama-adapter is Axolotl's but refused here.</summary>
public enum AdapterKind { Lora, Qlora, [AxolotlKey("llama-adapter")] LlamaAdapter }

/// <summary>Axolotl's rl key (its RLType): preference training methods. gdpo, grpo and ebft need generation with rewards
/// and are refused when the config is read.</summary>
public enum RlMethod { Dpo, Gdpo, Grpo, Ipo, Orpo, Kto, Simpo, Ebft }

/// <summary>Axolotl's bf16 key: auto, true or false.</summary>
public enum Bf16Mode { Auto, True, False }

public sealed class AxolotlConfig
{
    // model
    public string BaseModel { get; set; } = "";
    public string? BaseModelConfig { get; set; }
    public string? TokenizerConfig { get; set; }
    /// <summary>The Hub revision (branch, tag or commit) of base_model, base_model_config and tokenizer_config.</summary>
    public string? RevisionOfModel { get; set; }
    /// <summary>base_model as written, when it was resolved to a Hub cache folder: what adapter_config.json names, as in PEFT.</summary>
    public string? BaseModelRepoId { get; internal set; }
    public string? ModelType { get; set; }
    public string? TokenizerType { get; set; }
    /// <summary>auto (bf16 where the CPU computes it natively, or on a GPU), true or false.</summary>
    public Bf16Mode Bf16 { get; set; } = Bf16Mode.Auto;
    /// <summary>
    /// Axolotl's <c>bfloat16: true</c> ("no AMP"): a full fine-tune keeps its weights, gradients and optimizer state
    /// in bf16 alone, as transformers trains a model loaded in bf16, instead of the default fp32 master weights and
    /// moments beside the bf16 weights. Less memory (8 instead of 16 bytes per parameter with AdamW); updates smaller
    /// than bf16's resolution are lost, which the fp32 masters exist to prevent. Read from the YAML key by value.
    /// </summary>
    public bool PureBf16 { get; internal set; }
    public bool TokenizerUseFast { get; set; } = true;
    /// <summary>Start from config.json with fresh weights instead of the checkpoint (pretraining from scratch).</summary>
    [AxolotlKey("reinit_weights")]
    public bool RandomInitWeights { get; set; }
    /// <summary>What runs is always PyTorch SDPA; other values are GPU kernels for the same math (warned).</summary>
    public string? AttnImplementation { get; set; }
    /// <summary>
    /// Values that replace base_model's config.json keys before the model is built, as Axolotl sets them on the loaded
    /// config (e.g. output_router_logits: true for the MoE load-balancing loss); a saved full model's config.json has them.
    /// </summary>
    public System.Text.Json.Nodes.JsonObject? ModelConfig { get; set; }
    /// <summary>
    /// Per-device memory limits as Axolotl gives transformers ({0: "20GiB", cpu: "60GiB"}); the cpu (or only) entry is
    /// the budget the memory plan refuses a run against (Planning.MemoryBudget).
    /// </summary>
    public Dictionary<string, string>? MaxMemory { get; set; }

    // data
    public List<DatasetConfig> Datasets { get; set; } = [];
    public int SequenceLen { get; set; } = 512;
    public bool TrainOnInputs { get; set; }
    /// <summary>Validation split: a fraction of the examples, or a count when above 1.</summary>
    public double ValSetSize { get; set; }
    /// <summary>Evaluate every N steps (or a fraction of the run below 1).</summary>
    public double? EvalSteps { get; set; }
    public int? EvalsPerEpoch { get; set; }
    /// <summary>steps, epoch or no; with a validation split and nothing set, once per epoch.</summary>
    public IntervalStrategy? EvalStrategy { get; set; }
    /// <summary>Stop after this many evaluations in a row without a better metric_for_best_model.</summary>
    public int? EarlyStoppingPatience { get; set; }
    /// <summary>End training on the weights of the checkpoint with the best metric_for_best_model.</summary>
    public bool LoadBestModelAtEnd { get; set; }
    /// <summary>eval_loss or eval_perplexity ("loss" means eval_loss, as in transformers); unset is eval_loss.</summary>
    public string? MetricForBestModel { get; set; }
    /// <summary>Unset: false (both metrics are better lower).</summary>
    public bool? GreaterIsBetter { get; set; }
    public bool SamplePacking { get; set; }
    /// <summary>Unset follows sample_packing, as in Axolotl.</summary>
    public bool? EvalSamplePacking { get; set; }
    /// <summary>Pad each batch to sequence_len (rounded up to 64); unset means true with sample_packing, as in Axolotl.</summary>
    public bool? PadToSequenceLen { get; set; }
    public int SamplePackingGroupSize { get; set; } = 100_000;
    /// <summary>At most this many examples per packed row.</summary>
    public int SamplePackingBinSize { get; set; } = 200;
    public bool SamplePackingSequentially { get; set; }
    /// <summary>
    /// Packed micro-batch = micro_batch_size rows of sequence_len (true) or one row of both multiplied (false). Axolotl
    /// defaults to false only for varlen GPU kernels (flash_attention_2 …); SDPA runs here, where one long row costs
    /// quadratically more attention for the same loss, so the default is SDPA's.
    /// </summary>
    public bool MultipackRealBatches { get; set; } = true;
    public bool ShuffleMergedDatasets { get; set; } = true;
    /// <summary>
    /// Text streamed from these (Axolotl reads only the first entry) instead of a prepared dataset; needs max_steps.
    /// See Data/PretrainingStream.cs.
    /// </summary>
    public List<DatasetConfig> PretrainingDataset { get; set; } = [];
    /// <summary>Set with pretraining_dataset (implied by it, as in Axolotl); without it, the one SFT dataset is read,
    /// tokenized (and packed) as rows arrive instead of prepared first (needs max_steps). See Data/PretrainingStream.cs.</summary>
    public bool Streaming { get; set; }
    /// <summary>pretraining_dataset without packing: true packs whole texts into sequence_len blocks; unset or false, one text per row.</summary>
    public bool? PretrainingSampleConcatenation { get; set; }
    /// <summary>Rows tokenized (and shuffled, and packed) together from a stream.</summary>
    public int StreamingMultipackBufferSize { get; set; } = 10_000;
    /// <summary>Packed streamed samples do not attend across each other (false is refused: cross-attention is not implemented).</summary>
    public bool PretrainMultipackAttn { get; set; } = true;
    /// <summary>Datasets for evaluation instead of a val_set_size split.</summary>
    public List<DatasetConfig> TestDatasets { get; set; } = [];
    /// <summary>drop (default), truncate or raise: what happens to a sequence longer than sequence_len.</summary>
    public string ExcessLengthStrategy { get; set; } = "drop";
    /// <summary>Sequences shorter than this are dropped (Axolotl's default 2).</summary>
    public int MinSampleLen { get; set; } = 2;
    public bool DatasetExactDeduplication { get; set; }
    /// <summary>fail (default, as Axolotl) or skip: what a row that cannot be used does. Not an Axolotl key.</summary>
    public string BadRows { get; set; } = "fail";
    /// <summary>
    /// auto (default), cpu, cuda or cuda:N: where the model and its batches live. Axolotl computes this key itself
    /// (cuda when torch sees a GPU, else cpu) and overwrites a given value; here auto is that rule and the others pin it.
    /// </summary>
    public string Device { get; set; } = "auto";
    /// <summary>Where prepared datasets are cached (Axolotl's default last_run_prepared).</summary>
    public string? DatasetPreparedPath { get; set; }

    /// <summary>The template of chat_template datasets: tokenizer_default (unset), tokenizer_default_fallback_&lt;name&gt;, a bundled name, or jinja.</summary>
    public string? ChatTemplate { get; set; }
    /// <summary>With chat_template: jinja, the template text or the path of a .jinja file.</summary>
    public string? ChatTemplateJinja { get; set; }
    /// <summary>The tokens that end a turn, trained per train_on_eot; unset: the tokenizer's EOS.</summary>
    public List<string>? EotTokens { get; set; }

    /// <summary>The folder the tokenizer comes from: tokenizer_config, else base_model_config, else base_model.</summary>
    public string TokenizerFolder() => TokenizerConfig ?? BaseModelConfig ?? BaseModel;

    /// <summary>bos/eos/pad/unk tokens set on the tokenizer (as special added tokens), as Axolotl's loader does.</summary>
    public Dictionary<string, string>? SpecialTokens { get; set; }
    /// <summary>Embeddings sized to the tokenizer rounded up to a multiple of 32 (a no-op when the model's are already that big).</summary>
    [AxolotlKey("resize_token_embeddings_to_32x")]
    public bool ResizeTokenEmbeddingsTo32x { get; set; }
    /// <summary>Tokens added to the tokenizer (only tokens the vocabulary already holds, for now).</summary>
    public List<string>? Tokens { get; set; }

    // adapter
    public AdapterKind? Adapter { get; set; }
    /// <summary>adapter: lora or qlora (llama-adapter is refused when the config is read).</summary>
    public bool HasLora => Adapter is AdapterKind.Lora or AdapterKind.Qlora;
    public string? LoraModelDir { get; set; }
    public int? LoraR { get; set; }
    public double? LoraAlpha { get; set; }
    public double LoraDropout { get; set; }
    public List<string>? LoraTargetModules { get; set; }
    public bool LoraTargetLinear { get; set; }
    /// <summary>Modules trained in full and saved with the adapter (PEFT's modules_to_save).</summary>
    public List<string>? LoraModulesToSave { get; set; }
    public List<int>? PeftLayersToTransform { get; set; }
    public bool PeftUseDora { get; set; }
    public bool PeftUseRslora { get; set; }
    /// <summary>QLoRA: the frozen Linear weights (all but lm_head) stored as bitsandbytes NF4.</summary>
    [AxolotlKey("load_in_4bit")]
    public bool LoadIn4Bit { get; set; }
    /// <summary>The frozen Linear weights (all but lm_head) stored as row-wise int8.</summary>
    [AxolotlKey("load_in_8bit")]
    public bool LoadIn8Bit { get; set; }
    /// <summary>LoRA+: the learning rate of lora_B (and 1-D adapter parameters) is learning_rate × this.</summary>
    public double? LoraplusLrRatio { get; set; }
    /// <summary>LoRA+ rate of LoRA embedding layers; there are none here (adapters wrap Linear layers), so it has no effect.</summary>
    public double? LoraplusLrEmbedding { get; set; }
    /// <summary>Axolotl's peft block: only loftq_config ({loftq_bits: 4}) is read, LoftQ initialisation of the adapter.</summary>
    public System.Text.Json.Nodes.JsonObject? Peft { get; set; }
    /// <summary>peft.loftq_config.loftq_bits (4 when loftq_config is given without it, as Axolotl's default; 0 when it
    /// is not a whole number); null without LoftQ.</summary>
    public int? LoftqBits => Peft?["loftq_config"] is System.Text.Json.Nodes.JsonObject loftq
        ? loftq["loftq_bits"] is { } bits ? (int.TryParse(bits.ToJsonString(), out var n) ? n : 0) : 4 : null;
    /// <summary>Overrides of Axolotl's 4-bit BitsAndBytesConfig (nf4, double quantization, compute dtype = the model's).</summary>
    public Dictionary<string, string>? BnbConfigKwargs { get; set; }

    // training
    /// <summary>Also write the logged scalars as TensorBoard event files under output_dir/runs/.</summary>
    public bool UseTensorboard { get; set; }

    // axolotl inference --gradio (here: axolotl serve), Axolotl's keys for its browser UI
    /// <summary>The chat page's title.</summary>
    public string? GradioTitle { get; set; }
    /// <summary>Gradio's public share link; there is none here (a warning says so when true).</summary>
    public bool? GradioShare { get; set; }
    /// <summary>The address to listen on (default 127.0.0.1); --host overrides it.</summary>
    public string? GradioServerName { get; set; }
    /// <summary>The port (default 7860); --port overrides it.</summary>
    public int? GradioServerPort { get; set; }
    /// <summary>The page's initial max tokens and temperature (Axolotl's defaults 1024 and 0.9).</summary>
    public int? GradioMaxNewTokens { get; set; }
    public double? GradioTemperature { get; set; }

    // evaluation tables, causal-LM metrics and trackers (Training/Trackers/)
    /// <summary>At each evaluation, greedy completions of the eval prompts (batches of eval rows until more than this many
    /// rows are shown, as Axolotl's LogPredictionCallback) go to eval_samples.jsonl and TensorBoard's text plugin; 0: none.</summary>
    public int EvalTableSize { get; set; }
    /// <summary>New tokens per generated completion (eval table and causal-LM eval), and perplexity's window.</summary>
    public int EvalMaxNewTokens { get; set; } = 128;
    /// <summary>Metrics of do_causal_lm_eval: perplexity is computed; sacrebleu, comet, ter, chrf (downloaded by HF
    /// evaluate in Axolotl) are not, with a warning. Axolotl's default is sacrebleu, comet, ter, chrf.</summary>
    public List<string>? EvalCausalLmMetrics { get; set; }
    /// <summary>At each evaluation, log eval_{metric} for eval_causal_lm_metrics over the eval rows' completions.</summary>
    public bool DoCausalLmEval { get; set; }
    /// <summary>Also log to MLflow (implied by mlflow_experiment_name, as Axolotl sets it).</summary>
    public bool? UseMlflow { get; set; }
    /// <summary>An http(s) MLflow tracking server (REST API) or a file: URI / path (MLflow's file store); ./mlruns when unset.</summary>
    public string? MlflowTrackingUri { get; set; }
    /// <summary>MLflow experiment, created when missing; "Default" (id 0) when unset.</summary>
    public string? MlflowExperimentName { get; set; }
    public string? MlflowRunName { get; set; }
    /// <summary>Also copy the axolotl config and each checkpoint's files into the MLflow run's artifacts.</summary>
    public bool HfMlflowLogArtifacts { get; set; }
    /// <summary>Serve the training metrics in Prometheus' text format at http://otel_metrics_host:otel_metrics_port/metrics.</summary>
    public bool UseOtelMetrics { get; set; }
    public string OtelMetricsHost { get; set; } = "localhost";
    public int OtelMetricsPort { get; set; } = 8000;
    /// <summary>Batches in the prepared data's order every epoch (Axolotl's SequentialSampler) instead of shuffled.</summary>
    public bool CurriculumSampling { get; set; }
    /// <summary>Stop when the logged loss exceeds this for loss_watchdog_patience (default 3) step ends in a row.</summary>
    public double? LossWatchdogThreshold { get; set; }
    public int? LossWatchdogPatience { get; set; }
    public int MicroBatchSize { get; set; } = 1;
    /// <summary>Full fine-tune: only parameters whose HF name matches one of these (Axolotl's rule, <see cref="UnfrozenPattern"/>) train.</summary>
    public List<string>? UnfrozenParameters { get; set; }
    /// <summary>LISA: this many decoder layers train at a time, drawn again every lisa_step_interval steps.</summary>
    public int? LisaNLayers { get; set; }
    public int? LisaStepInterval { get; set; }
    /// <summary>Path of the decoder layer list under the model, as Axolotl's default.</summary>
    public string LisaLayersAttribute { get; set; } = "model.layers";
    // Preference training (rl: dpo, ipo, simpo, orpo), TRL's keys as Axolotl names them; unset means TRL's default.
    public RlMethod? Rl { get; set; }
    public double? RlBeta { get; set; }
    public List<string>? DpoLossType { get; set; }
    /// <summary>One weight per dpo_loss_type entry (TRL's loss_weights); unset weighs each 1.</summary>
    public List<double>? DpoLossWeights { get; set; }
    public double? DpoLabelSmoothing { get; set; }
    public double? SimpoGamma { get; set; }
    public double? CpoAlpha { get; set; }
    public double? OrpoAlpha { get; set; }
    /// <summary>KTO's weights of the desirable and undesirable losses (TRL's KTOConfig default 1 each).</summary>
    public double? KtoDesirableWeight { get; set; }
    public double? KtoUndesirableWeight { get; set; }
    public int? MaxPromptLen { get; set; }
    public bool PrecomputeRefLogProbs { get; set; }
    // Reward models (TRL's RewardTrainer, bradley_terry.* data) and process reward models (PRMTrainer, stepwise_supervised data).
    public bool RewardModel { get; set; }
    public bool ProcessRewardModel { get; set; }
    /// <summary>The classifier head's outputs: 1 for a reward model, 2 (by default) for a process reward model.</summary>
    public int? NumLabels { get; set; }
    /// <summary>TRL's center_rewards_coefficient: adds coef × mean((r_chosen + r_rejected)²) to the reward loss.</summary>
    public double? CenterRewardsCoefficient { get; set; }
    public int GradientAccumulationSteps { get; set; } = 1;
    /// <summary>micro_batch_size × gradient_accumulation_steps; when given instead, gradient_accumulation_steps is derived.</summary>
    public int? BatchSize { get; set; }
    /// <summary>Unset means micro_batch_size, as in Axolotl.</summary>
    public int? EvalBatchSize { get; set; }
    public double NumEpochs { get; set; } = 1;
    public int? MaxSteps { get; set; }
    public double? LearningRate { get; set; }
    public string Optimizer { get; set; } = "adamw_torch_fused";
    public string LrScheduler { get; set; } = "cosine";
    /// <summary>cosine only: decay to this fraction of learning_rate instead of 0.</summary>
    public double? CosineMinLrRatio { get; set; }
    /// <summary>cosine with cosine_min_lr_ratio: reach the floor after this fraction of the steps, then hold it.</summary>
    public double? CosineConstantLrRatio { get; set; }
    /// <summary>cosine only: the warmup rises quadratically (Axolotl's get_cosine_schedule_with_quadratic_warmup).</summary>
    public bool? LrQuadraticWarmup { get; set; }
    /// <summary>Arguments of transformers' schedule function (num_cycles, lr_end, power, min_lr, num_decay_steps...).</summary>
    public System.Text.Json.Nodes.JsonObject? LrSchedulerKwargs { get; set; }
    /// <summary>Axolotl's jagged restarts: every N steps the rate drops to cosine_min_lr_ratio (or 0.001) of the schedule
    /// and warms back up over jagged_restart_warmup_steps (unset: 10); jagged_restart_anneal_steps (unset: 1) before each.</summary>
    public int? JaggedRestartSteps { get; set; }
    public int? JaggedRestartWarmupSteps { get; set; }
    public int? JaggedRestartAnnealSteps { get; set; }
    /// <summary>ReLoRA: every jagged_restart_steps the LoRA is merged into the base weights and restarted, and the
    /// adapter's optimizer state pruned (relora_prune_method magnitude | random | reset, relora_prune_ratio).</summary>
    public bool Relora { get; set; }
    public double? ReloraPruneRatio { get; set; }
    public string? ReloraPruneMethod { get; set; }
    /// <summary>Merge on the CPU; the whole run is on one device here, so it changes nothing.</summary>
    public bool ReloraCpuOffload { get; set; }
    public int? WarmupSteps { get; set; }
    public double? WarmupRatio { get; set; }
    public double WeightDecay { get; set; }
    /// <summary>Unset means transformers' default of 1.0; 0 turns clipping off.</summary>
    public double? MaxGradNorm { get; set; }
    public double? AdamBeta1 { get; set; }
    public double? AdamBeta2 { get; set; }
    public double? AdamEpsilon { get; set; }
    public int? LoggingSteps { get; set; }
    /// <summary>true: recompute each decoder layer in backward instead of keeping its activations (less memory, same
    /// gradients); false; Axolotl's offload and offload_disk recompute the same way (warned).</summary>
    public GradientCheckpointingMode GradientCheckpointing { get; set; } = GradientCheckpointingMode.False;
    /// <summary>Any gradient_checkpointing but false: decoder layers are recomputed in backward.</summary>
    public bool RecomputesLayers => GradientCheckpointing != GradientCheckpointingMode.False;
    public int Seed { get; set; } = 42;
    public string OutputDir { get; set; } = "./model-out";
    public bool SaveSafetensors { get; set; } = true;

    // checkpoints and resume
    /// <summary>Checkpoint every N steps, or a fraction (&lt; 1) of the total; transformers' default is 500.</summary>
    public double? SaveSteps { get; set; }
    public int? SavesPerEpoch { get; set; }
    /// <summary>steps (default) or no; epoch means once per epoch.</summary>
    public IntervalStrategy SaveStrategy { get; set; } = IntervalStrategy.Steps;
    public int? SaveTotalLimit { get; set; }
    /// <summary>Checkpoints hold the weights only (no optimizer or RNG state), as transformers; they cannot be resumed from.</summary>
    public bool SaveOnlyModel { get; set; }
    /// <summary>A DeepSpeed JSON file; under MPI its zero_optimization.stage (1 or 2) shards the optimizer state across
    /// ranks (read when training starts, Distributed/DeepSpeedConfig.cs).</summary>
    public string? Deepspeed { get; set; }
    public string? ResumeFromCheckpoint { get; set; }
    public bool AutoResumeFromCheckpoints { get; set; }
    public bool Strict { get; set; }

    /// <summary>The YAML file this came from ("" when built in code).</summary>
    public string SourcePath { get; set; } = "";

    /// <summary>One line each: a key that was mapped to what Axolotl.NET does instead, or that has no effect here.</summary>
    public List<string> Warnings { get; } = [];
    /// <summary>The keys behind <see cref="Warnings"/> (set, but run as their nearest equivalent).</summary>
    public HashSet<string> WarnedKeys { get; } = [];

    /// <summary>Where each resolved value came from, by key: "12:1" in the file, "--flag", or how it was derived.</summary>
    public Dictionary<string, string> Sources { get; } = [];

    /// <summary>
    /// Values as the user wrote them for keys that were resolved to local Hub-cache folders ("base_model",
    /// "datasets[0].path", …): the saved config names these Hub ids, not this machine's cache paths.
    /// </summary>
    public Dictionary<string, string> AsWritten { get; } = [];

    /// <summary>
    /// Validates this config and fills in its defaults and derived values exactly as loading a YAML file does (YAML is
    /// one way to build a config; one built in code goes through the same checks). Returns a new, resolved config.
    /// </summary>
    public AxolotlConfig Resolve() => ConfigLoader.Parse(ConfigWriter.ToYaml(this), SourcePath == "" ? "(config built in code)" : SourcePath);
}
