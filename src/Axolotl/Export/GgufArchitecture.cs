using System.Text.Json.Nodes;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Export;

/// <summary>
/// How a family's Hugging Face checkpoint maps onto llama.cpp's GGUF layout, as llama.cpp's convert_hf_to_gguf.py does
/// it: the architecture name, the <c>{arch}.*</c> hyperparameters, tensor names (HF key ↔ GGUF name) and the per-tensor
/// changes of layout (Llama's Q/K row permutation, Gemma's norm weights stored as 1 + w). Both directions live here, so
/// export and read-back cannot drift apart.
/// </summary>
internal sealed class GgufArchitecture
{
    /// <summary>HF model_type → llama.cpp architecture name. Mistral is a Llama to llama.cpp's converter.</summary>
    static readonly Dictionary<string, string> Architectures = new()
    {
        ["llama"] = "llama", ["mistral"] = "llama", ["qwen2"] = "qwen2", ["qwen3"] = "qwen3",
        ["gemma"] = "gemma", ["gemma2"] = "gemma2", ["phi"] = "phi2", ["phi3"] = "phi3",
    };

    public string Name { get; }
    public DecoderConfig Config { get; }

    GgufArchitecture(string name, DecoderConfig config) { Name = name; Config = config; }

    /// <summary>The mapping for <paramref name="config"/>, or a one-sentence refusal naming what llama.cpp cannot take from us yet.</summary>
    public static GgufArchitecture For(DecoderConfig config)
    {
        if (!Architectures.TryGetValue(config.ModelType, out var name))
            throw new UserError($"GGUF export: model_type '{config.ModelType}' has no llama.cpp architecture here (supported: {string.Join(", ", Architectures.Keys)}).");
        if (config.RopeScaling is { } scaling && scaling.Type is not ("linear" or "llama3"))
            throw new UserError($"GGUF export: rope_scaling type '{scaling.Type}' is not exported to GGUF yet (linear and llama3 are).");
        if (config.ModelType == "gemma2" && Math.Abs(config.AttentionScale - 1 / Math.Sqrt(config.HeadDim)) > 1e-9)
            throw new UserError("GGUF export: gemma2 with query_pre_attn_scalar other than head_dim is not exported yet (llama.cpp scales queries by 1/sqrt(head_dim)).");
        if (name is "gemma" or "gemma2" && !config.TieWordEmbeddings)
            throw new UserError($"GGUF export: a {config.ModelType} model with an untied lm_head cannot be exported (llama.cpp's {name} always reads the head from the embeddings).");
        return new GgufArchitecture(name, config);
    }

    /// <summary>The llama.cpp architecture a GGUF file names → HF model_type.</summary>
    public static string ModelTypeOf(string architecture, string path) => architecture switch
    {
        "llama" or "qwen2" or "qwen3" or "gemma" or "gemma2" or "phi3" => architecture,
        "phi2" => "phi",
        _ => throw new UserError($"{path}: GGUF architecture '{architecture}' cannot be loaded here (llama, qwen2, qwen3, gemma, gemma2, phi2 and phi3 can)."),
    };

    bool PermutesQk => Name == "llama";
    bool NormPlusOne => Name is "gemma" or "gemma2";

    /// <summary>The <c>{arch}.*</c> hyperparameters llama.cpp reads for this architecture.</summary>
    public void AddHyperparameters(GgufWriter writer)
    {
        var c = Config;
        string a = Name;
        writer.Add("general.architecture", GgufValue.Of(a));
        writer.Add($"{a}.vocab_size", GgufValue.Of((uint)c.VocabSize));
        writer.Add($"{a}.context_length", GgufValue.Of((uint)c.MaxPositionEmbeddings));
        writer.Add($"{a}.embedding_length", GgufValue.Of((uint)c.HiddenSize));
        writer.Add($"{a}.block_count", GgufValue.Of((uint)c.NumLayers));
        writer.Add($"{a}.feed_forward_length", GgufValue.Of((uint)c.IntermediateSize));
        writer.Add($"{a}.attention.head_count", GgufValue.Of((uint)c.NumHeads));
        writer.Add($"{a}.attention.head_count_kv", GgufValue.Of((uint)c.NumKeyValueHeads));
        writer.Add($"{a}.attention.key_length", GgufValue.Of((uint)c.HeadDim));
        writer.Add($"{a}.attention.value_length", GgufValue.Of((uint)c.HeadDim));
        writer.Add($"{a}.rope.freq_base", GgufValue.Of((float)c.RopeTheta));
        writer.Add($"{a}.rope.dimension_count", GgufValue.Of((uint)c.RotaryDim));
        writer.Add(c.Norm == NormKind.Rms ? $"{a}.attention.layer_norm_rms_epsilon" : $"{a}.attention.layer_norm_epsilon", GgufValue.Of((float)c.NormEps));
        if (c.RopeScaling is { Type: "linear" } linear)
        {
            writer.Add($"{a}.rope.scaling.type", GgufValue.Of("linear"));
            writer.Add($"{a}.rope.scaling.factor", GgufValue.Of((float)linear.Factor));
        }
        if (c.AttentionSoftcap is double attentionCap) writer.Add($"{a}.attn_logit_softcapping", GgufValue.Of((float)attentionCap));
        if (c.FinalLogitSoftcap is double finalCap) writer.Add($"{a}.final_logit_softcapping", GgufValue.Of((float)finalCap));
        if (c.SlidingWindow is int window && Name is "gemma2" or "phi3") writer.Add($"{a}.attention.sliding_window", GgufValue.Of((uint)window));
    }

    /// <summary>HF state-dict key → GGUF tensor name; null for a key llama.cpp has no place for.</summary>
    public string? GgufName(string hf)
    {
        switch (hf)
        {
            case "model.embed_tokens.weight": return "token_embd.weight";
            case "lm_head.weight": return "output.weight";
            case "lm_head.bias": return "output.bias";
        }
        if (hf.StartsWith("model.") && !hf.StartsWith("model.layers.") && hf[6..].StartsWith(Config.Names.FinalNorm + "."))
            return "output_norm." + hf[(7 + Config.Names.FinalNorm.Length)..];
        if (!hf.StartsWith("model.layers.")) return null;
        var rest = hf["model.layers.".Length..];
        int dot = rest.IndexOf('.');
        var layer = rest[..dot];
        var part = rest[(dot + 1)..];
        int last = part.LastIndexOf('.');
        var module = part[..last];
        var suffix = part[(last + 1)..];
        var n = Config.Names;
        string? name = module switch
        {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => Name == "gemma2" ? "post_attention_norm" : "ffn_norm",
            "pre_feedforward_layernorm" => "ffn_norm",
            "post_feedforward_layernorm" => "post_ffw_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            _ when module == "self_attn." + n.FusedQkv => "attn_qkv",
            _ when module == "self_attn." + n.AttentionOutput => "attn_output",
            _ when module == "mlp." + n.MlpGate => "ffn_gate",
            _ when module == "mlp." + n.MlpUp => "ffn_up",
            _ when module == "mlp." + n.FusedGateUp => "ffn_up", // llama.cpp's phi3 splits it: gate rows first, then up
            _ when module == "mlp." + n.MlpDown => "ffn_down",
            _ => null,
        };
        return name is null ? null : $"blk.{layer}.{name}.{suffix}";
    }

    /// <summary>The tensor as llama.cpp wants it (fp32): Q/K rows permuted for Llama's rotary layout, Gemma's norms as 1 + w.</summary>
    public Tensor ToGguf(string hf, Tensor value)
    {
        var t = value.to(ScalarType.Float32);
        if (PermutesQk && hf.EndsWith("self_attn.q_proj.weight") || PermutesQk && hf.EndsWith("self_attn.q_proj.bias")) return Permute(t, Config.NumHeads, toGguf: true);
        if (PermutesQk && hf.EndsWith("self_attn.k_proj.weight") || PermutesQk && hf.EndsWith("self_attn.k_proj.bias")) return Permute(t, Config.NumKeyValueHeads, toGguf: true);
        if (NormPlusOne && IsGemmaNorm(hf)) return t + 1;
        return t;
    }

    /// <summary>The inverse of <see cref="ToGguf"/>.</summary>
    public Tensor FromGguf(string hf, Tensor t)
    {
        if (PermutesQk && (hf.EndsWith("self_attn.q_proj.weight") || hf.EndsWith("self_attn.q_proj.bias"))) return Permute(t, Config.NumHeads, toGguf: false);
        if (PermutesQk && (hf.EndsWith("self_attn.k_proj.weight") || hf.EndsWith("self_attn.k_proj.bias"))) return Permute(t, Config.NumKeyValueHeads, toGguf: false);
        if (NormPlusOne && IsGemmaNorm(hf)) return t - 1;
        return t;
    }

    static bool IsGemmaNorm(string hf) => hf.EndsWith("norm.weight");

    /// <summary>
    /// HF rotates the two halves of each head (rotate_half); llama.cpp's Llama rotates adjacent pairs, as Meta's
    /// checkpoints did. So each head's rows [first half | second half] are interleaved to (h0, h_d/2, h1, h_d/2+1, ...).
    /// </summary>
    static Tensor Permute(Tensor t, int heads, bool toGguf)
    {
        var shape = t.shape;
        long rows = shape[0], half = rows / heads / 2;
        var rest = shape.Skip(1).ToArray();
        var split = toGguf ? new long[] { heads, 2, half } : [heads, half, 2];
        return t.reshape([.. split, .. rest]).transpose(1, 2).reshape(shape);
    }

    /// <summary>
    /// Llama 3's rope_scaling as llama.cpp takes it: a rope_freqs tensor of per-frequency divisors (1 for high
    /// frequencies, factor for low ones, blended between), from the same wavelength rule transformers applies.
    /// </summary>
    public float[]? RopeFrequencyFactors()
    {
        if (Config.RopeScaling is not { Type: "llama3" } s) return null;
        int dim = Config.RotaryDim;
        double original = s.OriginalMaxPositionEmbeddings ?? 8192;
        double lowWavelen = original / s.LowFreqFactor, highWavelen = original / s.HighFreqFactor;
        var factors = new float[dim / 2];
        for (int i = 0; i < dim / 2; i++)
        {
            double freq = 1.0 / Math.Pow(Config.RopeTheta, 2.0 * i / dim);
            double wavelen = 2 * Math.PI / freq;
            if (wavelen < highWavelen) factors[i] = 1;
            else if (wavelen > lowWavelen) factors[i] = (float)s.Factor;
            else
            {
                double smooth = (original / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                factors[i] = (float)(1 / ((1 - smooth) / s.Factor + smooth));
            }
        }
        return factors;
    }

    /// <summary>
    /// A config.json for the model a GGUF file holds, built from its <c>{arch}.*</c> metadata and tensor shapes, so
    /// the usual per-family defaults apply when reading it back.
    /// </summary>
    public static JsonObject ConfigJson(GgufReader file)
    {
        var arch = file.GetString("general.architecture") ?? throw new UserError($"{file.Path}: no general.architecture in the GGUF metadata.");
        var modelType = ModelTypeOf(arch, file.Path);
        uint U(string key) => file.Metadata.TryGetValue($"{arch}.{key}", out var v) ? v.AsUInt($"{arch}.{key}")
            : throw new UserError($"{file.Path}: the GGUF metadata lacks '{arch}.{key}'.");
        double? D(string key) => file.Metadata.TryGetValue($"{arch}.{key}", out var v) ? v.AsDouble($"{arch}.{key}") : null;
        uint? OptU(string key) => file.Metadata.ContainsKey($"{arch}.{key}") ? U(key) : null;
        if (!file.Tensors.TryGetValue("token_embd.weight", out var embedding)) throw new UserError($"{file.Path}: no token_embd.weight tensor.");
        int heads = (int)U("attention.head_count"), hidden = (int)U("embedding_length");
        int headDim = (int)(OptU("attention.key_length") ?? (uint)(hidden / heads));
        var json = new JsonObject
        {
            ["model_type"] = modelType,
            ["vocab_size"] = (int)embedding.Dims[1],
            ["hidden_size"] = hidden,
            ["intermediate_size"] = (int)U("feed_forward_length"),
            ["num_hidden_layers"] = (int)U("block_count"),
            ["num_attention_heads"] = heads,
            ["num_key_value_heads"] = (int)(OptU("attention.head_count_kv") ?? (uint)heads),
            ["head_dim"] = headDim,
            ["max_position_embeddings"] = (int)(OptU("context_length") ?? 2048),
            ["rope_theta"] = D("rope.freq_base") ?? 10000,
            ["tie_word_embeddings"] = !file.Tensors.ContainsKey("output.weight"),
        };
        if (D("attention.layer_norm_rms_epsilon") is double rms) json["rms_norm_eps"] = rms;
        if (D("attention.layer_norm_epsilon") is double ln) json["layer_norm_eps"] = ln;
        if (OptU("rope.dimension_count") is uint rot && rot != headDim) json["partial_rotary_factor"] = (double)rot / headDim;
        if (arch == "llama" && file.Tensors.ContainsKey("blk.0.attn_q.bias")) json["attention_bias"] = true;
        if (file.GetString($"{arch}.rope.scaling.type") == "linear")
            json["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = D("rope.scaling.factor") ?? 1 };
        else if (file.Tensors.ContainsKey("rope_freqs.weight"))
            throw new UserError($"{file.Path}: rope_freqs (Llama 3 rope scaling) cannot be read back yet.");
        if (arch == "gemma2")
        {
            json["query_pre_attn_scalar"] = (double)headDim;
            json["attn_logit_softcapping"] = D("attn_logit_softcapping") is double a ? a : null;
            json["final_logit_softcapping"] = D("final_logit_softcapping") is double f ? f : null;
        }
        if (OptU("attention.sliding_window") is uint window) json["sliding_window"] = (int)window;
        foreach (var (key, name) in new[] { ("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id") })
            if (file.Metadata.TryGetValue(name, out var id)) json[key] = (int)id.AsUInt(name);
        return json;
    }
}
