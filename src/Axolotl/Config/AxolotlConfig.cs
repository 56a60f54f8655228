namespace Axolotl.Config;

// The config schema: one property per Axolotl key, named as the key in PascalCase (the loader maps snake_case to it).
// Defaults are Axolotl's. A key Axolotl knows that is not a property here is refused by name when set (ConfigLoader).

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
    /// <summary>Where this entry sits in the YAML file, for messages about its rows.</summary>
    internal string Origin { get; set; } = "";
}

public sealed class AxolotlConfig
{
    // model
    public string BaseModel { get; set; } = "";
    public string? BaseModelConfig { get; set; }
    public string? TokenizerConfig { get; set; }
    public string? ModelType { get; set; }
    public string? TokenizerType { get; set; }
    /// <summary>"auto" (bf16 where the CPU computes it natively), true or false.</summary>
    public string Bf16 { get; set; } = "auto";
    /// <summary>Start from config.json with fresh weights instead of the checkpoint (pretraining from scratch).</summary>
    public bool RandomInitWeights { get; set; }

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
    public string? EvalStrategy { get; set; }
    public bool SamplePacking { get; set; }
    public bool ShuffleMergedDatasets { get; set; } = true;

    // adapter
    public string? Adapter { get; set; }
    public string? LoraModelDir { get; set; }
    public int? LoraR { get; set; }
    public double? LoraAlpha { get; set; }
    public double LoraDropout { get; set; }
    public List<string>? LoraTargetModules { get; set; }
    public bool LoraTargetLinear { get; set; }

    // training
    public int MicroBatchSize { get; set; } = 1;
    public int GradientAccumulationSteps { get; set; } = 1;
    public double NumEpochs { get; set; } = 1;
    public int? MaxSteps { get; set; }
    public double? LearningRate { get; set; }
    public string Optimizer { get; set; } = "adamw_torch_fused";
    public string LrScheduler { get; set; } = "cosine";
    public int? WarmupSteps { get; set; }
    public double? WarmupRatio { get; set; }
    public double WeightDecay { get; set; }
    /// <summary>Unset means transformers' default of 1.0; 0 turns clipping off.</summary>
    public double? MaxGradNorm { get; set; }
    public double? AdamBeta1 { get; set; }
    public double? AdamBeta2 { get; set; }
    public double? AdamEpsilon { get; set; }
    public int? LoggingSteps { get; set; }
    public int Seed { get; set; } = 42;
    public string OutputDir { get; set; } = "./model-out";
    public bool SaveSafetensors { get; set; } = true;

    // checkpoints and resume
    /// <summary>Checkpoint every N steps, or a fraction (&lt; 1) of the total; transformers' default is 500.</summary>
    public double? SaveSteps { get; set; }
    public int? SavesPerEpoch { get; set; }
    /// <summary>steps (default) or no; epoch means once per epoch.</summary>
    public string SaveStrategy { get; set; } = "steps";
    public int? SaveTotalLimit { get; set; }
    public string? ResumeFromCheckpoint { get; set; }
    public bool AutoResumeFromCheckpoints { get; set; }
    public bool Strict { get; set; }

    /// <summary>The YAML file this came from ("" when built in code).</summary>
    public string SourcePath { get; set; } = "";

    /// <summary>micro_batch_size × gradient_accumulation_steps, as Axolotl derives batch_size.</summary>
    public int BatchSize => MicroBatchSize * GradientAccumulationSteps;
}
