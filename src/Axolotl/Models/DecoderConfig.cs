using System.Text.Json.Nodes;

namespace Axolotl.Models;

internal enum NormKind { Rms, Layer }

/// <summary>
/// HF state-dict names of the parts whose names differ between families. Modules are registered under these names,
/// so weights load, LoRA targets and adapters save by HF's own keys.
/// </summary>
internal sealed record ModuleNames
{
    public string AttentionOutput { get; init; } = "o_proj";
    public string MlpGate { get; init; } = "gate_proj";
    public string MlpUp { get; init; } = "up_proj";
    public string MlpDown { get; init; } = "down_proj";
    /// <summary>Phi-3 keeps q, k and v in one qkv_proj and gate and up in one gate_up_proj; LoRA targets them by these names.</summary>
    public string FusedQkv { get; init; } = "qkv_proj";
    public string FusedGateUp { get; init; } = "gate_up_proj";
    public string FinalNorm { get; init; } = "norm";
}

/// <summary>
/// The architecture read from a Hugging Face config.json. Family differences are data here, so the decoder is one
/// piece of code: a family that needs a new behaviour adds a field, not a class. Only <see cref="FromJson"/> knows
/// families, because config.json keys and their defaults are per family.
/// </summary>
internal sealed record DecoderConfig
{
    public required string ModelType { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public NormKind Norm { get; init; } = NormKind.Rms;
    public double NormEps { get; init; } = 1e-6;
    /// <summary>RMSNorm scales by (offset + w); Gemma stores w around 0 and uses 1.</summary>
    public double NormWeightOffset { get; init; }
    public double RopeTheta { get; init; } = 10000;
    /// <summary>Sliding-window layers rotate with this base and no rope_scaling (Gemma 3's rope_local_base_freq); null: as the others.</summary>
    public double? SlidingRopeTheta { get; init; }
    /// <summary>Fraction of each head's dims that are rotated (phi's partial_rotary_factor); the rest pass through.</summary>
    public double RotaryFraction { get; init; } = 1.0;
    public int RotaryDim => (int)(HeadDim * RotaryFraction);
    public RopeScaling? RopeScaling { get; init; }
    /// <summary>Attention to keys more than this many positions back is masked (Mistral, Gemma 2, Phi-3).</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>
    /// transformers 4.40's Mistral lets position i see i - window .. i (window + 1 keys); Gemma 2 and current
    /// transformers see window keys (i - window &lt; j &lt;= i).
    /// </summary>
    public bool SlidingWindowInclusive { get; init; }
    /// <summary>Which layers use the window; null: all of them (Gemma 2 alternates, starting with layer 0).</summary>
    public IReadOnlyList<bool>? SlidingLayers { get; init; }
    public bool IsSliding(int layer) => SlidingWindow is not null && (SlidingLayers?[layer] ?? true);
    /// <summary>RMSNorm over each head's query and key before RoPE (Qwen3's q_norm, k_norm).</summary>
    public bool QkNorm { get; init; }
    /// <summary>One qkv_proj and one gate_up_proj instead of separate projections (Phi-3).</summary>
    public bool FusedProjections { get; init; }
    /// <summary>Attention scores are multiplied by this; 1/sqrt(head_dim) unless query_pre_attn_scalar says (Gemma 2).</summary>
    public double AttentionScale { get; init; }
    /// <summary>cap · tanh(x / cap) on attention scores and on the final logits (Gemma 2); null: none.</summary>
    public double? AttentionSoftcap { get; init; }
    public double? FinalLogitSoftcap { get; init; }
    /// <summary>Norms after attention and around the MLP too (Gemma 2's post_attention, pre/post_feedforward_layernorm).</summary>
    public bool SandwichNorms { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Multiply embeddings by sqrt(hidden_size), rounded to the compute dtype first (Gemma).</summary>
    public bool ScaleEmbeddings { get; init; }
    /// <summary>Bias on q/k/v projections (Qwen2; Llama's attention_bias covers o_proj too).</summary>
    public bool QkvBias { get; init; }
    public bool OutputBias { get; init; }
    public bool MlpBias { get; init; }
    public bool LmHeadBias { get; init; }
    /// <summary>act(gate(x)) * up(x) → down (Llama), or act(up(x)) → down (phi's fc1/fc2).</summary>
    public bool GatedMlp { get; init; } = true;
    /// <summary>h = x + attn(ln(x)) + mlp(ln(x)) with one norm per layer (phi), instead of two sequential residuals.</summary>
    public bool ParallelBlock { get; init; }
    public string Activation { get; init; } = "silu";
    public double AttentionDropout { get; init; }
    public double ResidualDropout { get; init; }
    public double EmbeddingDropout { get; init; }
    public ModuleNames Names { get; init; } = new();
    /// <summary>Mixture-of-experts MLPs (Mixtral, Qwen2-MoE, Qwen3-MoE); null: every MLP is dense.</summary>
    public MoeConfig? Moe { get; init; }
    /// <summary>A classifier head (reward and process reward models) in place of lm_head; null: a causal LM.</summary>
    public ClassifierHead? Classifier { get; init; }
    public double InitializerRange { get; init; } = 0.02;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    /// <summary>The config.json as read, so saving a model writes back what came in (with our changes applied).</summary>
    public JsonObject Raw { get; init; } = new();

    static readonly string[] Supported = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "mixtral", "qwen2_moe", "qwen3_moe"];
    public static readonly string[] Activations = ["silu", "gelu", "gelu_new", "gelu_pytorch_tanh"];

    /// <summary>
    /// The architecture of a model folder (or GGUF file). <paramref name="overrides"/> replace config.json keys before it
    /// is read (the run config's model_config), as Axolotl sets them on the loaded config: the model is built from, and
    /// saves, the overridden config.
    /// </summary>
    public static DecoderConfig FromFolder(string modelDir, JsonObject? overrides = null)
    {
        JsonObject json;
        string source;
        if (Export.GgufModel.IsGguf(modelDir)) (json, source) = (Export.GgufModel.ReadConfigJson(modelDir), modelDir);
        else
        {
            source = Path.Combine(modelDir, "config.json");
            if (!Directory.Exists(modelDir)) throw new UserError($"base_model: folder '{modelDir}' does not exist.");
            if (!File.Exists(source)) throw new UserError($"{modelDir}: no config.json; base_model must be a Hugging Face model folder.");
            json = IO.JsonFiles.ReadObject(source);
        }
        if (overrides is { Count: > 0 })
        {
            foreach (var (key, value) in overrides) json[key] = value?.DeepClone();
            source += " as model_config overrides it";
        }
        return FromJson(json, source);
    }

    public static DecoderConfig FromJson(JsonObject json, string source)
    {
        string modelType = json["model_type"]?.GetValue<string>() ?? throw new UserError($"{source}: no model_type.");
        if (modelType == "gemma3")
            throw new UserError($"{source}: model_type 'gemma3' is Gemma 3's multimodal checkpoint, which is not supported yet; " +
                                "use a text-only Gemma 3 (model_type gemma3_text, Gemma3ForCausalLM).");
        if (!Supported.Contains(modelType))
            throw new UserError($"{source}: model_type '{modelType}' is not supported yet (supported: {string.Join(", ", Supported)}).");
        if (json["qk_layernorm"]?.GetValue<bool>() == true)
            throw new UserError($"{source}: qk_layernorm is not supported yet.");
        try
        {
            var c = Common(json, modelType, source);
            c = modelType switch
            {
                "qwen2" => c with { QkvBias = true },
                "qwen3" => c with { QkNorm = true, HeadDim = json["head_dim"]?.GetValue<int>() ?? 128 },
                "mistral" => c with { SlidingWindow = json["sliding_window"]?.GetValue<int>(), SlidingWindowInclusive = true },
                "gemma" => c with
                {
                    NormWeightOffset = 1,
                    ScaleEmbeddings = true,
                    TieWordEmbeddings = Bool(json, "tie_word_embeddings") ?? true,
                    // Gemma reads hidden_activation and ignores hidden_act (transformers PR 29402).
                    Activation = json["hidden_activation"]?.GetValue<string>() ?? "gelu_pytorch_tanh",
                    HeadDim = json["head_dim"]?.GetValue<int>() ?? 256, // GemmaConfig's default, not hidden / heads
                },
                "gemma2" => c with
                {
                    NormWeightOffset = 1,
                    ScaleEmbeddings = true,
                    SandwichNorms = true,
                    TieWordEmbeddings = Bool(json, "tie_word_embeddings") ?? true,
                    Activation = json["hidden_activation"]?.GetValue<string>() ?? "gelu_pytorch_tanh",
                    HeadDim = json["head_dim"]?.GetValue<int>() ?? 256,
                    AttentionScale = 1 / Math.Sqrt(json["query_pre_attn_scalar"]?.GetValue<double>() ?? 256),
                    AttentionSoftcap = Double(json, "attn_logit_softcapping", 50.0),
                    FinalLogitSoftcap = Double(json, "final_logit_softcapping", 30.0),
                    SlidingWindow = json.ContainsKey("sliding_window") ? json["sliding_window"]?.GetValue<int>() : 4096,
                    SlidingLayers = Gemma2SlidingLayers(json, c.NumLayers, source),
                },
                "gemma3_text" => c with
                {
                    NormWeightOffset = 1,
                    ScaleEmbeddings = true,
                    SandwichNorms = true,
                    QkNorm = true,
                    TieWordEmbeddings = Bool(json, "tie_word_embeddings") ?? true,
                    Activation = json["hidden_activation"]?.GetValue<string>() ?? "gelu_pytorch_tanh",
                    HeadDim = json["head_dim"]?.GetValue<int>() ?? 256,
                    AttentionScale = 1 / Math.Sqrt(json["query_pre_attn_scalar"]?.GetValue<double>() ?? 256),
                    AttentionSoftcap = json["attn_logit_softcapping"]?.GetValue<double>(),
                    FinalLogitSoftcap = json["final_logit_softcapping"]?.GetValue<double>(),
                    SlidingWindow = json.ContainsKey("sliding_window") ? json["sliding_window"]?.GetValue<int>() : 4096,
                    SlidingLayers = Gemma3SlidingLayers(json, c.NumLayers, source),
                    RopeTheta = Gemma3RopeTheta(json, "full_attention") ?? json["rope_theta"]?.GetValue<double>() ?? 1_000_000,
                    SlidingRopeTheta = Gemma3RopeTheta(json, "sliding_attention") ?? json["rope_local_base_freq"]?.GetValue<double>() ?? 10_000,
                },
                "mixtral" => c with
                {
                    SlidingWindow = json["sliding_window"]?.GetValue<int>(),
                    SlidingWindowInclusive = true, // as Mistral in transformers 4.40
                    Moe = new MoeConfig
                    {
                        NumExperts = json["num_local_experts"]?.GetValue<int>() ?? 8,
                        TopK = json["num_experts_per_tok"]?.GetValue<int>() ?? 2,
                        ExpertIntermediateSize = c.IntermediateSize,
                        NormTopKProb = true,
                        RouterAuxLossCoef = json["router_aux_loss_coef"]?.GetValue<double>() ?? 0.001,
                        OutputRouterLogits = Bool(json, "output_router_logits") ?? false,
                        SparseLayers = Enumerable.Repeat(true, c.NumLayers).ToList(),
                        BlockName = "block_sparse_moe",
                        ExpertNames = new ModuleNames { MlpGate = "w1", MlpUp = "w3", MlpDown = "w2" },
                    },
                },
                "qwen2_moe" => c with { QkvBias = true, Moe = QwenMoe(json, c.NumLayers, source, shared: true) },
                "qwen3_moe" => c with { QkNorm = true, HeadDim = json["head_dim"]?.GetValue<int>() ?? 128, Moe = QwenMoe(json, c.NumLayers, source, shared: false) },
                "phi3" => c with
                {
                    FusedProjections = true,
                    NormEps = json["rms_norm_eps"]?.GetValue<double>() ?? 1e-5,
                    RotaryFraction = json["partial_rotary_factor"]?.GetValue<double>() ?? 1.0,
                    ResidualDropout = json["resid_pdrop"]?.GetValue<double>() ?? 0,
                    EmbeddingDropout = json["embd_pdrop"]?.GetValue<double>() ?? 0,
                    SlidingWindow = json["sliding_window"]?.GetValue<int>(),
                },
                "phi" => c with
                {
                    Norm = NormKind.Layer,
                    NormEps = json["layer_norm_eps"]?.GetValue<double>() ?? 1e-5,
                    RotaryFraction = json["partial_rotary_factor"]?.GetValue<double>() ?? 0.5,
                    QkvBias = true, OutputBias = true, MlpBias = true, LmHeadBias = true,
                    GatedMlp = false,
                    ParallelBlock = true,
                    Activation = json["hidden_act"]?.GetValue<string>() ?? "gelu_new",
                    ResidualDropout = json["resid_pdrop"]?.GetValue<double>() ?? 0,
                    EmbeddingDropout = json["embd_pdrop"]?.GetValue<double>() ?? 0,
                    Names = new ModuleNames { AttentionOutput = "dense", MlpUp = "fc1", MlpDown = "fc2", FinalNorm = "final_layernorm" },
                },
                _ => c,
            };
            if (c.AttentionScale == 0) c = c with { AttentionScale = 1 / Math.Sqrt(c.HeadDim) };
            if (modelType is "qwen2" or "qwen3" or "qwen2_moe" or "qwen3_moe" && Bool(json, "use_sliding_window") == true)
                throw new UserError($"{source}: use_sliding_window: true is not supported yet for {modelType}.");
            c = c with { RopeScaling = RopeScaling.FromJson(Gemma3FullRope(json) ?? json, source) };
            if (c.Moe is { } moe && moe.NumExperts > 0 && (moe.TopK < 1 || moe.TopK > moe.NumExperts))
                throw new UserError($"{source}: num_experts_per_tok ({moe.TopK}) must be between 1 and the number of experts ({moe.NumExperts}).");
            if (json["router_jitter_noise"]?.GetValue<double>() is > 0)
                throw new UserError($"{source}: router_jitter_noise > 0 is not supported yet; set it to 0.");
            if (modelType == "gemma3_text" && Bool(json, "use_bidirectional_attention") == true)
                throw new UserError($"{source}: use_bidirectional_attention: true is not supported yet.");
            if (!Activations.Contains(c.Activation))
                throw new UserError($"{source}: activation '{c.Activation}' is not supported yet (supported: {string.Join(", ", Activations)}).");
            if (c.RotaryDim % 2 != 0 || c.RotaryDim <= 0)
                throw new UserError($"{source}: the rotary dimension {c.RotaryDim} (head_dim × partial_rotary_factor) must be a positive even number.");
            return c;
        }
        catch (InvalidOperationException e) { throw new UserError($"{source}: a value has the wrong type ({e.Message})."); }
        catch (FormatException e) { throw new UserError($"{source}: a value has the wrong type ({e.Message})."); }
    }

    /// <summary>The keys that mean the same in every supported family (Llama's defaults).</summary>
    static DecoderConfig Common(JsonObject json, string modelType, string source)
    {
        int Req(string key) => json[key]?.GetValue<int>() ?? throw new UserError($"{source}: missing '{key}'.");
        int heads = Req("num_attention_heads");
        int hidden = Req("hidden_size");
        bool attentionBias = Bool(json, "attention_bias") ?? false;
        return new DecoderConfig
        {
            ModelType = modelType,
            VocabSize = Req("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = Req("intermediate_size"),
            NumLayers = Req("num_hidden_layers"),
            NumHeads = heads,
            NumKeyValueHeads = json["num_key_value_heads"]?.GetValue<int>() ?? heads,
            HeadDim = json["head_dim"]?.GetValue<int>() ?? hidden / heads,
            NormEps = json["rms_norm_eps"]?.GetValue<double>() ?? 1e-6,
            RopeTheta = json["rope_theta"]?.GetValue<double>() ?? 10000,
            TieWordEmbeddings = Bool(json, "tie_word_embeddings") ?? false,
            QkvBias = attentionBias,
            OutputBias = attentionBias,
            MlpBias = Bool(json, "mlp_bias") ?? false,
            Activation = json["hidden_act"]?.GetValue<string>() ?? "silu",
            AttentionDropout = json["attention_dropout"]?.GetValue<double>() ?? 0,
            InitializerRange = json["initializer_range"]?.GetValue<double>() ?? 0.02,
            MaxPositionEmbeddings = json["max_position_embeddings"]?.GetValue<int>() ?? 2048,
            BosTokenId = TokenId(json["bos_token_id"]),
            EosTokenId = TokenId(json["eos_token_id"]),
            Raw = json,
        };
    }

    static bool? Bool(JsonObject json, string key) => json[key]?.GetValue<bool>();

    /// <summary>A key whose absence means the family default but whose null means "off".</summary>
    static double? Double(JsonObject json, string key, double absent) =>
        json.ContainsKey(key) ? json[key]?.GetValue<double>() : absent;

    /// <summary>
    /// Gemma 2 slides on even layers (0, 2, ...) and attends fully on odd ones; newer configs spell it out in layer_types.
    /// </summary>
    static IReadOnlyList<bool> Gemma2SlidingLayers(JsonObject json, int layers, string source)
    {
        if (json["layer_types"] is not JsonArray types) return Enumerable.Range(0, layers).Select(i => i % 2 == 0).ToList();
        if (types.Count != layers) throw new UserError($"{source}: layer_types has {types.Count} entries for {layers} layers.");
        return types.Select(t => t?.GetValue<string>() switch
        {
            "sliding_attention" => true,
            "full_attention" => false,
            var other => throw new UserError($"{source}: layer_types entry '{other}' is not supported (sliding_attention, full_attention are)."),
        }).ToList();
    }

    /// <summary>
    /// Gemma 3 slides on all layers but every sliding_window_pattern-th (5 local : 1 global by default); newer configs
    /// spell it out in layer_types.
    /// </summary>
    static IReadOnlyList<bool> Gemma3SlidingLayers(JsonObject json, int layers, string source)
    {
        if (json["layer_types"] is JsonArray) return Gemma2SlidingLayers(json, layers, source);
        int pattern = json["sliding_window_pattern"]?.GetValue<int>() ?? 6;
        if (pattern < 1) throw new UserError($"{source}: sliding_window_pattern must be at least 1.");
        return Enumerable.Range(0, layers).Select(i => (i + 1) % pattern != 0).ToList();
    }

    /// <summary>Newer Gemma 3 configs give each layer type its own rope_parameters (rope_theta, and scaling for full attention).</summary>
    static double? Gemma3RopeTheta(JsonObject json, string layerType) =>
        (json["rope_parameters"] as JsonObject)?[layerType]?["rope_theta"]?.GetValue<double>();

    /// <summary>Full-attention layers' rope_parameters as an old-style rope_scaling, for <see cref="RopeScaling.FromJson"/>.</summary>
    static JsonObject? Gemma3FullRope(JsonObject json) =>
        (json["rope_parameters"] as JsonObject)?["full_attention"] is JsonObject full
            ? new JsonObject { ["rope_scaling"] = full.DeepClone(), ["original_max_position_embeddings"] = json["original_max_position_embeddings"]?.DeepClone() }
            : null;

    /// <summary>
    /// Qwen2-MoE's and Qwen3-MoE's experts: layer i is sparse unless listed in mlp_only_layers or (i + 1) is not a
    /// multiple of decoder_sparse_step; Qwen2-MoE adds a shared expert.
    /// </summary>
    static MoeConfig QwenMoe(JsonObject json, int layers, string source, bool shared)
    {
        int experts = json["num_experts"]?.GetValue<int>() ?? (shared ? 60 : 128);
        int step = json["decoder_sparse_step"]?.GetValue<int>() ?? 1;
        if (step < 1) throw new UserError($"{source}: decoder_sparse_step must be at least 1.");
        var mlpOnly = (json["mlp_only_layers"] as JsonArray)?.Select(x => x!.GetValue<int>()).ToHashSet() ?? [];
        return new MoeConfig
        {
            NumExperts = experts,
            TopK = json["num_experts_per_tok"]?.GetValue<int>() ?? (shared ? 4 : 8),
            ExpertIntermediateSize = json["moe_intermediate_size"]?.GetValue<int>() ?? (shared ? 1408 : 768),
            NormTopKProb = Bool(json, "norm_topk_prob") ?? false,
            SharedExpertIntermediateSize = shared ? json["shared_expert_intermediate_size"]?.GetValue<int>() ?? 5632 : null,
            RouterAuxLossCoef = json["router_aux_loss_coef"]?.GetValue<double>() ?? 0.001,
            OutputRouterLogits = Bool(json, "output_router_logits") ?? false,
            SparseLayers = Enumerable.Range(0, layers).Select(i => !mlpOnly.Contains(i) && experts > 0 && (i + 1) % step == 0).ToList(),
        };
    }

    static int? TokenId(JsonNode? node) => node switch
    {
        null => null,
        JsonArray a when a.Count > 0 => a[0]!.GetValue<int>(),
        JsonValue v => v.GetValue<int>(),
        _ => null,
    };
}
