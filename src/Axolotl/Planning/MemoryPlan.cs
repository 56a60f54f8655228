using System.Globalization;
using System.Text;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Quantization;
using Axolotl.Recipes;
using Axolotl.Runtime;

namespace Axolotl.Planning;

/// <summary>One line of the plan: a part of the peak and its bytes.</summary>
internal sealed record PlanPart(string Name, long Bytes, string Detail);

/// <summary>What the plan needs to know of prepared data: its longest row, the most trained tokens in one row and their mean.</summary>
internal sealed record RowLengths(int Longest, int MostTrained, double MeanTrained)
{
    public static RowLengths? Of(IReadOnlyList<Data.Example> examples) =>
        examples.Count == 0 ? null
            : new(examples.Max(e => e.InputIds.Length), examples.Max(e => e.TrainableTokens), examples.Average(e => (double)e.TrainableTokens));
}

/// <summary>
/// The memory a training run will peak at, predicted from config.json and the config alone (nothing is loaded): the
/// weights in their stored precision, the adapter or full-model training state, the activations autograd keeps for one
/// micro-batch (all layers', or with gradient checkpointing each layer's input plus the recomputed layer) and
/// backward's gradients beside them, the loss chunk, the freed heap glibc keeps and a fixed runtime. Rows are counted at sequence_len, the
/// most a micro-batch can hold, unless the run pads each micro-batch only to its longest row and that row is known
/// (<see cref="ReadsData"/>): then at the longest row rounded up to the padding multiple.
/// </summary>
internal sealed class MemoryPlan
{
    /// <summary>RSS outside glibc's heap of a training process (.NET, libtorch's and oneDNN's code and data): RSS less
    /// heap arena less mmapped chunks, 170-200 MiB in the README's runs.</summary>
    public const long RuntimeBytes = 200L << 20;

    /// <summary>How far a measured peak may sit below the prediction (README's table): the refusal's margin.</summary>
    public const double Tolerance = 0.15;

    public required IReadOnlyList<PlanPart> Parts { get; init; }
    public required long ActivationsWithCheckpointing { get; init; }
    public required long ActivationsWithout { get; init; }
    public required bool Checkpointing { get; init; }
    /// <summary>Bytes autograd keeps per token in each layer (ActivationMemoryTests measures them).</summary>
    public required long SavedBytesPerTokenLayer { get; init; }
    public required double FlopsPerStep { get; init; }
    public long PeakBytes => Parts.Sum(p => p.Bytes);

    /// <summary>Micro-batches of unpacked SFT rows are padded to their longest row (to a multiple of 64), not to sequence_len.</summary>
    public const int PadMultiple = 64;

    /// <summary>
    /// Whether the peak depends on the data's row lengths: unpacked supervised rows padded per micro-batch (packed rows,
    /// pad_to_sequence_len and streamed data fill sequence_len; preference and reward pairs are not what this plan models).
    /// </summary>
    public static bool ReadsData(AxolotlConfig config) =>
        !config.SamplePacking && config.PadToSequenceLen != true && !config.Streaming && config.PretrainingDataset.Count == 0
        && config.Rl is null && !config.RewardModel;

    /// <summary>Tokens per row the activations are planned for: sequence_len, or the longest row when that decides.</summary>
    static long RowTokens(AxolotlConfig config, RowLengths? rows) =>
        rows is not null && ReadsData(config)
            ? Math.Min(config.SequenceLen, (Math.Max(1, rows.Longest) + PadMultiple - 1) / PadMultiple * PadMultiple)
            : config.SequenceLen;

    public static MemoryPlan For(AxolotlConfig config, DecoderConfig arch, RowLengths? rowLengths = null) =>
        For(config, arch, config.MicroBatchSize, config.RecomputesLayers, QuantizationSettings.FromConfig(config), rowLengths);

    public static MemoryPlan For(AxolotlConfig config, DecoderConfig arch, int microBatchSize, bool checkpointing, QuantizationSettings? quantization,
        RowLengths? rowLengths = null)
    {
        int a = ModelLoading.ComputeType(config) == TorchSharp.torch.ScalarType.BFloat16 ? 2 : 4;
        long h = arch.HiddenSize, im = arch.IntermediateSize, layers = arch.NumLayers, vocab = arch.VocabSize;
        long q = (long)arch.NumHeads * arch.HeadDim, kv = (long)arch.NumKeyValueHeads * arch.HeadDim;
        // Per layer: (in, out) of q, k, v, o, gate, up, down.
        (string Name, long In, long Out)[] linears =
            [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h), ("gate_proj", h, im), ("up_proj", h, im), ("down_proj", im, h)];
        long linearElements = layers * linears.Sum(l => l.In * l.Out);
        long embedding = vocab * h, head = arch.TieWordEmbeddings ? 0 : vocab * h, norms = (2 * layers + 1) * h;
        long other = embedding + head + norms;
        var parts = new List<PlanPart>();

        double linearBytesPerElement = quantization switch
        {
            null => a,
            { Kind: QuantKind.Nf4, DoubleQuant: true } => 0.5 + 1.0 / Nf4Weight.BlockSize + 4.0 / (Nf4Weight.BlockSize * Nf4Weight.StatisticsBlockSize),
            { Kind: QuantKind.Nf4 } => 0.5 + 4.0 / Nf4Weight.BlockSize,
            _ => 1.0 + 4.0 / h,
        };
        string stored = quantization switch { null => a == 2 ? "bf16" : "fp32", { Kind: QuantKind.Nf4 } => "NF4", _ => "int8" };
        parts.Add(new("weights", (long)(linearElements * linearBytesPerElement) + other * a,
            $"{linearElements + other:N0} parameters: decoder linears in {stored}, embeddings and norms in {(a == 2 ? "bf16" : "fp32")}"));
        if (quantization is not null)
            parts.Add(new("dequantization buffer", linears.Max(l => l.In * l.Out) * a, "the largest linear weight, reused by every matmul"));

        bool adapter = config.HasLora;
        long rank = config.LoraR ?? 8;
        long trainable;
        HashSet<string>? targets = null;
        if (adapter)
        {
            targets = new HashSet<string>(config.LoraTargetModules ?? []);
            if (config.LoraTargetLinear) foreach (var l in linears) targets.Add(l.Name);
            trainable = layers * linears.Where(l => targets.Contains(l.Name)).Sum(l => rank * (l.In + l.Out));
            // fp32 weights, gradients and two AdamW moments.
            parts.Add(new("adapter, gradients, optimizer", trainable * 16, $"{trainable:N0} trainable fp32 parameters × (weight + gradient + 2 AdamW moments)"));
        }
        else
        {
            trainable = linearElements + other;
            // Per parameter: its gradient in its own dtype; with bf16 weights (unless bfloat16: true) an fp32 master, and
            // an fp32 gradient sum when micro-batches are accumulated; the optimizer's moments in the master's dtype
            // (8-bit AdamW: one byte each).
            bool masters = a == 2 && !config.PureBf16;
            bool eightBit = Training.TrainingOptimizer.EightBitAdamW.Contains(config.Optimizer);
            int moments = config.Optimizer switch { "sgd" or "adafactor" => 0, "lion_32bit" => 1, _ => 2 };
            double momentBytes = eightBit ? 1 : masters || a == 4 ? 4 : 2;
            long gradientSum = masters && config.GradientAccumulationSteps > 1 ? 4 : 0;
            double perParameter = a + (masters ? 4 : 0) + gradientSum + moments * momentBytes;
            string momentText = moments == 0 ? "" : $" + {moments} {(eightBit ? "8-bit" : momentBytes == 4 ? "fp32" : "bf16")} moment{(moments > 1 ? "s" : "")}";
            parts.Add(new("gradients, optimizer", (long)(trainable * perParameter),
                $"{trainable:N0} parameters × ({(a == 2 ? "bf16" : "fp32")} gradient{(masters ? " + fp32 master" : "")}{(gradientSum > 0 ? " + fp32 gradient sum" : "")}{momentText})"));
        }

        long rowTokens = RowTokens(config, rowLengths);
        long tokens = microBatchSize * rowTokens;
        string rows = rowTokens == config.SequenceLen ? $"{microBatchSize} × {config.SequenceLen} tokens"
            : $"{microBatchSize} × {rowTokens} tokens (the data's longest row, {rowLengths!.Longest}, padded to a multiple of {PadMultiple})";
        // What autograd keeps per token and layer, as bytes per token and how many such tensors (traced from the ops;
        // ActivationMemoryTests measures them):
        var saved = new List<(long BytesPerToken, int Count)>
        {
            // Each RMSNorm keeps its input in fp32 whatever the compute dtype (the cast's copy, or the fp32 residual
            // itself), and, when its weight trains, the normalized value.
            (4 * h, 2),
            (adapter ? 0 : a * h, 2),
            // Attention: the rotated q, the attention output, and k and v as attention got them: repeated to q's width
            // when heads share them (grouped-query attention).
            (a * q, 2), (a * (arch.NumKeyValueHeads == arch.NumHeads ? kv : q), 2),
            // The MLP: gate (silu's input), silu's output and up.
            (a * im, 3),
        };
        // A linear keeps its input when its weight or adapter trains: the norm output shared by q, k and v, the one
        // shared by gate and up, the attention output reshaped for o_proj, the product for down_proj. With LoRA dropout,
        // each adapter keeps its own dropped-out input and the noise it was multiplied by.
        (string[] Linears, long Width)[] inputs = [(["q_proj", "k_proj", "v_proj"], h), (["gate_proj", "up_proj"], h), (["o_proj"], q), (["down_proj"], im)];
        // Each adapter's rank-wide intermediate (A's output, scaled), kept by B.
        if (adapter) saved.Add((a * rank, linears.Count(l => targets!.Contains(l.Name))));
        foreach (var (names, width) in inputs)
        {
            int trained = names.Count(n => !adapter || targets!.Contains(n));
            if (adapter && config.LoraDropout > 0) saved.Add((a * width, 2 * trained));
            else if (trained > 0) saved.Add((a * width, 1));
        }
        // Packed rows attend through a [rows, 1, seq, seq] mask (same sample only); attention converts it to an additive
        // mask in the compute dtype, a new one per layer, and keeps it for its backward: seq values per token and layer.
        long maskPerTokenLayer = config.SamplePacking ? a * rowTokens : 0;
        long perTokenLayer = saved.Sum(t => t.BytesPerToken * t.Count) + maskPerTokenLayer;
        // Without checkpointing autograd keeps every layer's saved tensors, and while backward runs the gradients of
        // about 1.5 layers' worth are alive beside them; with it, the layer inputs, plus the recomputed layer and about
        // 2 layers' worth of gradients (both fitted on the measured in-use peaks of the README's table).
        long AllLayers(long perToken) => tokens * perToken * layers + (long)(1.5 * tokens * perToken);
        long Checkpointed(long perToken) => tokens * a * h * layers + 3 * tokens * perToken;
        long allLayers = AllLayers(perTokenLayer), checkpointed = Checkpointed(perTokenLayer);
        long activations = checkpointing ? checkpointed : allLayers;
        // The part glibc's heap holds: not the masks, large and of one size every layer and step, so reused as they are.
        long heapActivations = checkpointing ? Checkpointed(perTokenLayer - maskPerTokenLayer) : AllLayers(perTokenLayer - maskPerTokenLayer);
        parts.Add(new("activations", activations,
            $"{rows}; {Gib(allLayers)} without gradient checkpointing, {Gib(checkpointed)} with it (each includes backward's gradients)"));
        // Only positions whose next token is trained on go through the head, a chunk of rows at a time.
        long chunkRows = Math.Clamp(8_000_000 / vocab, 8, 1024);
        long typicalChunkRows = chunkRows;
        if (rowLengths is not null && ReadsData(config))
        {
            chunkRows = Math.Max(1, Math.Min(chunkRows, (long)microBatchSize * rowLengths.MostTrained));
            typicalChunkRows = Math.Max(1, Math.Min(chunkRows, (long)Math.Ceiling(microBatchSize * rowLengths.MeanTrained)));
        }
        long LossChunk(long rows) => rows * vocab * 4 * 3 + tokens * h * 4;
        long lossChunk = LossChunk(chunkRows);
        parts.Add(new("loss chunk", lossChunk, $"{chunkRows} rows × {vocab} fp32 logits, log-probabilities and gradient; the fp32 hidden-state gradient"));
        // glibc keeps freed buffers in its heap (TorchRuntime raises its thresholds to spare the page faults) and cannot
        // always reuse them for a differently sized request, so a run's peak RSS sits above what it has in use: fitted to
        // the measured peaks of the README's table, 3 × the loss chunk a typical micro-batch allocates (its buffers are
        // allocated and freed several times a step) + half the activations. jemalloc (AXOLOTL_MALLOC) hands unused
        // memory back instead.
        if (Runtime.NativeAllocator.Current == "glibc")
        {
            long typicalChunk = LossChunk(typicalChunkRows);
            parts.Add(new("freed heap kept by glibc", 3 * typicalChunk + heapActivations / 2,
                $"3 × the loss chunk{(typicalChunkRows < chunkRows ? $" of a typical micro-batch ({typicalChunkRows} rows)" : "")} + half the activations{(maskPerTokenLayer > 0 ? " but the attention masks" : "")} (measured fragmentation)"));
        }
        parts.Add(new("data", tokens * 8 * 4, "the micro-batch's ids, labels, positions and mask"));
        parts.Add(new("runtime", RuntimeBytes, ".NET's and libtorch's code and data outside the C heap"));

        long total = linearElements + other + (adapter ? trainable : 0);
        double flopsPerToken = Training.Flops.PerToken(arch, total, trainable, config.SequenceLen);
        return new MemoryPlan
        {
            Parts = parts, ActivationsWithCheckpointing = checkpointed, ActivationsWithout = allLayers, Checkpointing = checkpointing,
            SavedBytesPerTokenLayer = perTokenLayer, FlopsPerStep = flopsPerToken * tokens * config.GradientAccumulationSteps,
        };
    }

    static string Gib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1073741824.0:F2} GiB");

    /// <summary>The plan as printed: one line per part, the predicted step time, and last <c>predicted peak RSS: X.Y GiB</c>.</summary>
    public string Describe(double? matmulGflops)
    {
        var text = new StringBuilder();
        foreach (var p in Parts)
            text.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{p.Name,-30} {p.Bytes / 1073741824.0,8:F2} GiB  {p.Detail}"));
        if (matmulGflops is double g && g > 0)
            text.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"predicted time per step: {FlopsPerStep / (g * 1e9):F1} s ({FlopsPerStep / 1e12:F2} TFLOP at the measured matmul peak of {g:F0} GFLOP/s)"));
        text.Append(string.Create(CultureInfo.InvariantCulture, $"predicted peak RSS: {PeakBytes / 1073741824.0:F1} GiB"));
        return text.ToString();
    }

    /// <summary>
    /// Null when the run fits in <paramref name="availableBytes"/>; else one sentence saying so, with the first change
    /// that would fit: gradient checkpointing, a smaller micro-batch, QLoRA, a shorter sequence_len.
    /// </summary>
    public static string? Refusal(AxolotlConfig config, DecoderConfig arch, long availableBytes) =>
        Refusal(config, arch, (availableBytes, "available memory is"));

    /// <summary>As above, against a budget and the words that name it (<see cref="MemoryBudget.For"/>).</summary>
    public static string? Refusal(AxolotlConfig config, DecoderConfig arch, (long Bytes, string Source) budget, RowLengths? rowLengths = null)
    {
        long availableBytes = budget.Bytes;
        var plan = For(config, arch, rowLengths);
        // Refused only when the run would not fit even if the plan overestimated by its tolerance: a run that might fit
        // is left to try.
        bool Fits(long bytes) => bytes * (1 - Tolerance) <= availableBytes;
        if (availableBytes <= 0 || Fits(plan.PeakBytes)) return null;
        var quantization = QuantizationSettings.FromConfig(config);
        bool checkpointing = plan.Checkpointing;
        string? suggestion = null;
        if (!checkpointing && Fits(For(config, arch, config.MicroBatchSize, true, quantization, rowLengths).PeakBytes))
            suggestion = "gradient_checkpointing: true";
        for (int m = config.MicroBatchSize / 2; suggestion is null && m >= 1; m /= 2)
            if (Fits(For(config, arch, m, true, quantization, rowLengths).PeakBytes))
                suggestion = $"micro_batch_size: {m} with gradient_checkpointing: true (and gradient_accumulation_steps × {config.MicroBatchSize / m} to keep the batch)";
        if (suggestion is null && quantization is null && config.Adapter is AdapterKind.Lora or null
            && Fits(For(config, arch, 1, true, new QuantizationSettings(QuantKind.Nf4), rowLengths).PeakBytes))
            suggestion = "adapter: qlora with load_in_4bit: true, micro_batch_size: 1 and gradient_checkpointing: true";
        if (suggestion is null) suggestion = "a shorter sequence_len or a machine with more memory";
        return string.Create(CultureInfo.InvariantCulture,
            $"{config.SourcePath}: this run is predicted to peak at {plan.PeakBytes / 1073741824.0:F1} GiB but {budget.Source} {availableBytes / 1073741824.0:F1} GiB (axolotl plan shows the parts); try {suggestion}.");
    }
}
