using System.Text.Json.Nodes;

namespace Axolotl.Models;

public enum NormKind { Rms, Layer }

/// <summary>
/// HF state-dict names of the parts whose names differ between families. Modules are registered under these names,
/// so weights load, LoRA targets and adapters save by HF's own keys.
/// </summary>
public sealed record ModuleNames
{
    public string AttentionOutput { get; init; } = "o_proj";
    public string MlpGate { get; init; } = "gate_proj";
    public string MlpUp { get; init; } = "up_proj";
    public string MlpDown { get; init; } = "down_proj";
    public string FinalNorm { get; init; } = "norm";
}

/// <summary>
/// The architecture read from a Hugging Face config.json. Family differences are data here, so the decoder is one
/// piece of code: a family that needs a new behaviour adds a field, not a class. Only <see cref="FromJson"/> knows
/// families, because config.json keys and their defaults are per family.
/// </summary>
public sealed record DecoderConfig
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
    /// <summary>Fraction of each head's dims that are rotated (phi's partial_rotary_factor); the rest pass through.</summary>
    public double RotaryFraction { get; init; } = 1.0;
    public int RotaryDim => (int)(HeadDim * RotaryFraction);
    /// <summary>Attention to keys more than this many positions back is masked (Mistral).</summary>
    public int? SlidingWindow { get; init; }
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
    public double InitializerRange { get; init; } = 0.02;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    /// <summary>The config.json as read, so saving a model writes back what came in (with our changes applied).</summary>
    public JsonObject Raw { get; init; } = new();

    static readonly string[] Supported = ["llama", "mistral", "qwen2", "gemma", "phi"];
    public static readonly string[] Activations = ["silu", "gelu", "gelu_new", "gelu_pytorch_tanh"];

    public static DecoderConfig FromFolder(string modelDir)
    {
        var path = Path.Combine(modelDir, "config.json");
        if (!Directory.Exists(modelDir)) throw new UserError($"base_model: folder '{modelDir}' does not exist.");
        if (!File.Exists(path)) throw new UserError($"{modelDir}: no config.json; base_model must be a Hugging Face model folder.");
        return FromJson(IO.JsonFiles.ReadObject(path), path);
    }

    public static DecoderConfig FromJson(JsonObject json, string source)
    {
        string modelType = json["model_type"]?.GetValue<string>() ?? throw new UserError($"{source}: no model_type.");
        if (!Supported.Contains(modelType))
            throw new UserError($"{source}: model_type '{modelType}' is not supported yet (supported: {string.Join(", ", Supported)}).");
        if (json["rope_scaling"] is JsonObject)
            throw new UserError($"{source}: rope_scaling is not supported yet; only plain RoPE is.");
        if (json["qk_layernorm"]?.GetValue<bool>() == true)
            throw new UserError($"{source}: qk_layernorm is not supported yet.");
        try
        {
            var c = Common(json, modelType, source);
            c = modelType switch
            {
                "qwen2" => c with { QkvBias = true },
                "mistral" => c with { SlidingWindow = json["sliding_window"]?.GetValue<int>() },
                "gemma" => c with
                {
                    NormWeightOffset = 1,
                    ScaleEmbeddings = true,
                    TieWordEmbeddings = Bool(json, "tie_word_embeddings") ?? true,
                    // Gemma reads hidden_activation and ignores hidden_act (transformers PR 29402).
                    Activation = json["hidden_activation"]?.GetValue<string>() ?? "gelu_pytorch_tanh",
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

    static int? TokenId(JsonNode? node) => node switch
    {
        null => null,
        JsonArray a when a.Count > 0 => a[0]!.GetValue<int>(),
        JsonValue v => v.GetValue<int>(),
        _ => null,
    };
}
