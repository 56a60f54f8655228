using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

// Submodules and parameters are registered under Hugging Face state-dict names, so named_parameters() yields HF's keys
// with no mapping table. Field names are HF's (snake_case on purpose) where every family agrees; where families differ
// (ModuleNames), the module registers its children explicitly under the names the config gives.
#pragma warning disable IDE1006

/// <summary>
/// y = x W^T + b, computed in the input's dtype. fp32 weights (LoRA's adapters) with bf16 activations are cast here,
/// and autograd carries fp32 gradients back to them.
/// </summary>
internal sealed class Linear : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    public Parameter? bias;
    public long InFeatures { get; }
    public long OutFeatures { get; }

    /// <summary>
    /// Set while a loader builds a model whose linear weights it replaces straight from the checkpoint (the quantizing
    /// load): their memory is then never written, so its pages never become resident.
    /// </summary>
    [ThreadStatic] internal static bool LeaveWeightsUnwritten;

    public Linear(long inFeatures, long outFeatures, bool hasBias, ScalarType dtype) : base(nameof(Linear))
    {
        InFeatures = inFeatures; OutFeatures = outFeatures;
        weight = new Parameter(LeaveWeightsUnwritten ? empty(outFeatures, inFeatures, dtype: dtype) : zeros(outFeatures, inFeatures, dtype: dtype));
        bias = hasBias ? new Parameter(zeros(outFeatures, dtype: dtype)) : null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        DecodeMatmul.LinearOrTorch(x, Cast.To(weight, x.dtype), bias is null ? null : Cast.To(bias, x.dtype));
}

/// <summary>Token embeddings; the lookup is returned in the model's compute dtype.</summary>
internal sealed class Embedding : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    readonly ScalarType _computeType;

    public Embedding(long vocab, long hidden, ScalarType dtype, ScalarType computeType) : base(nameof(Embedding))
    {
        weight = new Parameter(zeros(vocab, hidden, dtype: dtype));
        _computeType = computeType;
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        var flat = weight.index_select(0, ids.reshape(-1));
        var shape = ids.shape.Append(weight.shape[1]).ToArray();
        return Cast.To(flat.view(shape), _computeType);
    }
}

/// <summary>
/// HF's RMSNorm, normalising in fp32. Llama-style (offset 0): cast back, then scale by w in the input dtype.
/// Gemma-style (offset 1): scale by (1 + w) still in fp32, then cast (transformers PR 29402) — the two differ in bf16.
/// </summary>
internal sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    readonly double _eps;
    public double Offset { get; }

    public RmsNorm(long hidden, double eps, double offset, ScalarType dtype) : base(nameof(RmsNorm))
    {
        weight = new Parameter(full(hidden, 1 - offset, dtype: dtype));
        _eps = eps;
        Offset = offset;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (Offset == 0 && CpuKernels.Uses("rmsnorm") && FusedRmsNorm.Applies(x, weight)) return FusedRmsNorm.Run(x, weight, _eps);
        return Composition(x, weight, _eps, Offset);
    }

    /// <summary>The norm in torch ops (any device, dtype or layout): what <see cref="FusedRmsNorm"/> computes in one pass.</summary>
    public static Tensor Composition(Tensor x, Tensor weight, double eps, double offset)
    {
        var inputType = x.dtype;
        var h = x.to(ScalarType.Float32);
        h = h * rsqrt(h.pow(2).mean([-1], keepdim: true) + eps);
        if (offset == 0) return Cast.To(weight, inputType) * h.to(inputType);
        return (h * (weight.to(ScalarType.Float32) + offset)).to(inputType);
    }
}

/// <summary>torch.nn.LayerNorm with weight and bias, in the input's dtype (phi).</summary>
internal sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight, bias;
    readonly double _eps;

    public LayerNorm(long hidden, double eps, ScalarType dtype) : base(nameof(LayerNorm))
    {
        weight = new Parameter(ones(hidden, dtype: dtype));
        bias = new Parameter(zeros(hidden, dtype: dtype));
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        F.layer_norm(x, [x.shape[^1]], Cast.To(weight, x.dtype), Cast.To(bias, x.dtype), _eps);
}

internal static class Parts
{
    public static nn.Module<Tensor, Tensor> Norm(DecoderConfig c, ScalarType dtype) => c.Norm switch
    {
        NormKind.Layer => new LayerNorm(c.HiddenSize, c.NormEps, dtype),
        _ => new RmsNorm(c.HiddenSize, c.NormEps, c.NormWeightOffset, dtype),
    };

    /// <summary>transformers' ACT2FN entries by name.</summary>
    public static Tensor Activate(string name, Tensor x) => name switch
    {
        "silu" => F.silu(x),
        "gelu" => F.gelu(x),
        "gelu_pytorch_tanh" => x.gelu(TorchSharp.Modules.GELU.Approximate.tanh),
        // NewGELUActivation spells the tanh approximation out in Python ops; follow its order of operations.
        "gelu_new" => 0.5 * x * (1.0 + tanh(Math.Sqrt(2.0 / Math.PI) * (x + 0.044715 * x.pow(3.0)))),
        _ => throw new ArgumentException($"activation {name}"),
    };

    public static Tensor Dropout(Tensor x, double p, bool training) => p > 0 && training ? F.dropout(x, p, true) : x;
}

/// <summary>
/// What every layer needs about positions: rotary angles, and masks when plain causal is not enough (Mask for
/// full-attention layers, SlidingMask for sliding-window layers). With a cache, keys and values of earlier tokens come
/// from it and the new ones are appended.
/// </summary>
internal sealed record Positions(Tensor Cos, Tensor Sin, Tensor? Mask)
{
    /// <summary>Angles of the sliding-window layers when they rotate with their own base (Gemma 3's rope_local_base_freq).</summary>
    public (Tensor Cos, Tensor Sin)? SlidingAngles { get; init; }
    public Tensor? SlidingMask { get; init; }
    public KvCache? Cache { get; init; }
}

/// <summary>Past keys and values per layer (after RoPE, before GQA expansion), for generation one token at a time.</summary>
internal sealed class KvCache : IDisposable
{
    readonly Tensor?[] _keys, _values;
    public KvCache(int layers) { _keys = new Tensor?[layers]; _values = new Tensor?[layers]; }

    /// <summary>Tokens cached so far (those of the last layer written, which all layers reach in one forward).</summary>
    public long Length => _keys[^1]?.shape[2] ?? 0;

    /// <summary>Appends this step's keys and values [batch, kv_heads, seq, head_dim]; returns all of them so far.</summary>
    public (Tensor Keys, Tensor Values) Append(int layer, Tensor keys, Tensor values)
    {
        var k = _keys[layer] is { } pastK ? cat([pastK, keys], 2) : keys.alias();
        var v = _values[layer] is { } pastV ? cat([pastV, values], 2) : values.alias();
        // The cache outlives the dispose scope of the step that made these.
        _keys[layer]?.Dispose(); _values[layer]?.Dispose();
        _keys[layer] = k.DetachFromDisposeScope();
        _values[layer] = v.DetachFromDisposeScope();
        return (k, v);
    }

    public void Dispose()
    {
        foreach (var t in _keys.Concat(_values)) t?.Dispose();
        Array.Clear(_keys); Array.Clear(_values);
    }
}

/// <summary>Rotary position embedding in the split-halves layout (HF's rotate_half), angles computed in fp32.</summary>
internal static class Rope
{
    public static (Tensor Cos, Tensor Sin) Angles(long seqLen, int rotaryDim, double theta, ScalarType type, Device device)
    {
        var exponent = arange(0, rotaryDim, 2, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32) / rotaryDim;
        var invFreq = 1.0f / full_like(exponent, theta).pow(exponent);
        return Angles(arange(0, seqLen, dtype: ScalarType.Int64, device: device), invFreq, 1.0, type);
    }

    /// <summary>cos/sin [.., rotary_dim] for integer positions (any shape), times the scaling's attention factor.</summary>
    public static (Tensor Cos, Tensor Sin) Angles(Tensor positions, Tensor invFreq, double attentionFactor, ScalarType type)
    {
        var freqs = positions.to(ScalarType.Float32).unsqueeze(-1) * invFreq;
        var emb = cat([freqs, freqs], -1);
        var cos = emb.cos();
        var sin = emb.sin();
        if (attentionFactor != 1.0) { cos = cos * attentionFactor; sin = sin * attentionFactor; }
        return (cos.to(type), sin.to(type));
    }

    /// <summary>x: [batch, heads, seq, head_dim]; cos/sin: [seq, rotary_dim] or, packed, [batch, 1, seq, rotary_dim]. Dims past rotary_dim pass through (partial rotary).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long dim = cos.shape[^1];
        if (dim < x.shape[^1])
            return cat([Apply(x.narrow(-1, 0, dim), cos, sin), x.narrow(-1, dim, x.shape[^1] - dim)], -1);
        long half = dim / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat([-x2, x1], -1);
        return x * cos + rotated * sin;
    }
}

internal sealed class Attention : nn.Module<Tensor, Positions, Tensor>
{
    public nn.Module<Tensor, Tensor>? q_proj, k_proj, v_proj, qkv_proj;
    public nn.Module<Tensor, Tensor> o_proj;
    public RmsNorm? q_norm, k_norm;
    readonly int _heads, _kvHeads, _headDim, _layer;
    readonly double _dropout, _scale;
    readonly double? _softcap;
    readonly bool _sliding;

    public Attention(DecoderConfig c, ScalarType dtype, int layer = 0) : base("self_attn")
    {
        _heads = c.NumHeads; _kvHeads = c.NumKeyValueHeads; _headDim = c.HeadDim; _dropout = c.AttentionDropout;
        _layer = layer; _scale = c.AttentionScale; _softcap = c.AttentionSoftcap; _sliding = c.IsSliding(layer);
        if (c.FusedProjections)
        {
            qkv_proj = new Linear(c.HiddenSize, (c.NumHeads + 2 * c.NumKeyValueHeads) * c.HeadDim, c.QkvBias, dtype);
            register_module(c.Names.FusedQkv, qkv_proj);
        }
        else
        {
            q_proj = new Linear(c.HiddenSize, c.NumHeads * c.HeadDim, c.QkvBias, dtype);
            k_proj = new Linear(c.HiddenSize, c.NumKeyValueHeads * c.HeadDim, c.QkvBias, dtype);
            v_proj = new Linear(c.HiddenSize, c.NumKeyValueHeads * c.HeadDim, c.QkvBias, dtype);
            register_module("q_proj", q_proj);
            register_module("k_proj", k_proj);
            register_module("v_proj", v_proj);
        }
        o_proj = new Linear(c.NumHeads * c.HeadDim, c.HiddenSize, c.OutputBias, dtype);
        register_module(c.Names.AttentionOutput, o_proj);
        if (c.QkNorm)
        {
            // Qwen3 scales by w, Gemma 3 by (1 + w), as its other norms.
            q_norm = new RmsNorm(c.HeadDim, c.NormEps, c.NormWeightOffset, dtype);
            k_norm = new RmsNorm(c.HeadDim, c.NormEps, c.NormWeightOffset, dtype);
            register_module("q_norm", q_norm);
            register_module("k_norm", k_norm);
        }
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    public override Tensor forward(Tensor x, Positions positions)
    {
        long batch = x.shape[0], seq = x.shape[1];
        Tensor q, k, v;
        if (qkv_proj is not null)
        {
            // Phi-3's fused projection holds q, then k, then v along the output dimension.
            var qkv = qkv_proj.forward(x);
            q = qkv.narrow(-1, 0, _heads * _headDim);
            k = qkv.narrow(-1, _heads * _headDim, _kvHeads * _headDim);
            v = qkv.narrow(-1, (_heads + _kvHeads) * _headDim, _kvHeads * _headDim);
        }
        else (q, k, v) = (q_proj!.forward(x), k_proj!.forward(x), v_proj!.forward(x));
        q = q.view(batch, seq, _heads, _headDim);
        k = k.view(batch, seq, _kvHeads, _headDim);
        if (q_norm is not null) { q = q_norm.forward(q); k = k_norm!.forward(k); }
        var (cos, sin) = _sliding && positions.SlidingAngles is { } local ? local : (positions.Cos, positions.Sin);
        // The fused CPU kernel rotates in the projection's own [batch, seq, heads, head_dim] layout, before the transpose.
        bool fused = CpuKernels.Uses("rope") && FusedRope.Applies(q, cos, sin) && FusedRope.Applies(k, cos, sin);
        if (fused) { q = FusedRope.Run(q, cos, sin); k = FusedRope.Run(k, cos, sin); }
        q = q.transpose(1, 2);
        k = k.transpose(1, 2);
        v = v.view(batch, seq, _kvHeads, _headDim).transpose(1, 2);
        if (!fused)
        {
            q = Rope.Apply(q, cos, sin);
            k = Rope.Apply(k, cos, sin);
        }
        if (positions.Cache is { } cache) (k, v) = cache.Append(_layer, k, v);
        if (_kvHeads != _heads)
        {
            // Grouped-query attention: each KV head serves heads/kv_heads consecutive query heads (HF's repeat_kv).
            int groups = _heads / _kvHeads;
            k = k.repeat_interleave(groups, 1);
            v = v.repeat_interleave(groups, 1);
        }
        // Right padding needs no extra mask: a real token never attends to a later (padded) position.
        double p = training ? _dropout : 0.0;
        var mask = _sliding ? positions.SlidingMask ?? positions.Mask : positions.Mask;
        // A single query with a cache sees every cached key: no mask (unless a window cuts some off).
        bool causal = mask is null && k.shape[2] == seq && seq > 1;
        var attended = _softcap is null && Math.Abs(_scale * Math.Sqrt(_headDim) - 1) < 1e-12
            ? F.scaled_dot_product_attention(q, k, v, mask, p, causal)
            : Eager(q, k, v, mask ?? (causal ? CausalMask(seq, x.device) : null), p);
        return o_proj.forward(attended.transpose(1, 2).reshape(batch, seq, _heads * _headDim));
    }

    /// <summary>
    /// transformers' eager attention, for what SDPA cannot do: a scale other than 1/sqrt(head_dim) and soft-capped
    /// scores (Gemma 2). Scores are capped before masking, and the softmax runs in fp32.
    /// </summary>
    Tensor Eager(Tensor q, Tensor k, Tensor v, Tensor? mask, double dropout)
    {
        var scores = matmul(q, k.transpose(2, 3)) * _scale;
        if (_softcap is double cap) scores = (scores / cap).tanh() * cap;
        if (mask is not null) scores = scores.masked_fill(mask.logical_not(), double.NegativeInfinity);
        var weights = F.softmax(scores, -1, ScalarType.Float32).to(q.dtype);
        weights = Parts.Dropout(weights, dropout, training);
        return matmul(weights, v);
    }

    static Tensor CausalMask(long seq, Device device) => ones(seq, seq, ScalarType.Bool, device).tril();
}

internal sealed class Mlp : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor>? gate_proj, up_proj, gate_up_proj;
    public nn.Module<Tensor, Tensor> down_proj;
    readonly string _activation;
    readonly long _intermediate;

    /// <param name="intermediateSize">Width of this MLP when not the config's (MoE experts, Qwen2-MoE's shared expert).</param>
    /// <param name="names">State-dict names of the projections when not the config's (Mixtral's experts: w1, w3, w2).</param>
    public Mlp(DecoderConfig c, ScalarType dtype, long? intermediateSize = null, ModuleNames? names = null) : base("mlp")
    {
        _activation = c.Activation;
        _intermediate = intermediateSize ?? c.IntermediateSize;
        names ??= c.Names;
        if (c.FusedProjections)
        {
            gate_up_proj = new Linear(c.HiddenSize, 2 * _intermediate, c.MlpBias, dtype);
            register_module(names.FusedGateUp, gate_up_proj);
        }
        else
        {
            if (c.GatedMlp)
            {
                gate_proj = new Linear(c.HiddenSize, _intermediate, c.MlpBias, dtype);
                register_module(names.MlpGate, gate_proj);
            }
            up_proj = new Linear(c.HiddenSize, _intermediate, c.MlpBias, dtype);
            register_module(names.MlpUp, up_proj);
        }
        down_proj = new Linear(_intermediate, c.HiddenSize, c.MlpBias, dtype);
        register_module(names.MlpDown, down_proj);
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    public override Tensor forward(Tensor x)
    {
        if (gate_up_proj is not null)
        {
            // Phi-3's fused projection: the gate's half first, then up's.
            var gateUp = gate_up_proj.forward(x);
            return down_proj.forward(gateUp.narrow(-1, _intermediate, _intermediate) * Parts.Activate(_activation, gateUp.narrow(-1, 0, _intermediate)));
        }
        if (gate_proj is null) return down_proj.forward(Parts.Activate(_activation, up_proj!.forward(x)));
        var gate = gate_proj.forward(x);
        var up = up_proj!.forward(x);
        return down_proj.forward(_activation == "silu" && CpuKernels.Uses("swiglu") && FusedSwiGlu.Applies(gate, up) ? FusedSwiGlu.Run(gate, up) : Parts.Activate(_activation, gate) * up);
    }
}

internal sealed class DecoderLayer : nn.Module<Tensor, Positions, Tensor>
{
    public Attention self_attn;
    /// <summary>A dense <see cref="Mlp"/>, or a <see cref="SparseMoeBlock"/> registered under the config's block name.</summary>
    public nn.Module<Tensor, Tensor> mlp;
    public nn.Module<Tensor, Tensor> input_layernorm;
    public nn.Module<Tensor, Tensor>? post_attention_layernorm;
    /// <summary>Gemma 2's extra norms: post_attention_layernorm then normalises the attention output instead.</summary>
    public nn.Module<Tensor, Tensor>? pre_feedforward_layernorm, post_feedforward_layernorm;
    readonly double _residualDropout;

    /// <param name="routerLogits">Where a sparse layer reports its router logits for the load-balancing loss.</param>
    public DecoderLayer(DecoderConfig c, ScalarType dtype, int layer = 0, RouterLogits? routerLogits = null) : base(nameof(DecoderLayer))
    {
        self_attn = new Attention(c, dtype, layer);
        bool sparse = c.Moe is { } moe && moe.SparseLayers[layer];
        mlp = sparse ? new SparseMoeBlock(c, dtype, routerLogits) : new Mlp(c, dtype);
        input_layernorm = Parts.Norm(c, dtype);
        post_attention_layernorm = c.ParallelBlock ? null : Parts.Norm(c, dtype);
        if (c.SandwichNorms)
        {
            pre_feedforward_layernorm = Parts.Norm(c, dtype);
            post_feedforward_layernorm = Parts.Norm(c, dtype);
        }
        _residualDropout = c.ResidualDropout;
        register_module("self_attn", self_attn);
        register_module(sparse ? c.Moe!.BlockName : "mlp", mlp);
        register_module("input_layernorm", input_layernorm);
        if (post_attention_layernorm is not null) register_module("post_attention_layernorm", post_attention_layernorm);
        if (pre_feedforward_layernorm is not null) register_module("pre_feedforward_layernorm", pre_feedforward_layernorm);
        if (post_feedforward_layernorm is not null) register_module("post_feedforward_layernorm", post_feedforward_layernorm);
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    public override Tensor forward(Tensor x, Positions positions)
    {
        Tensor Drop(Tensor t) => Parts.Dropout(t, _residualDropout, training);
        var normed = input_layernorm.forward(x);
        if (post_attention_layernorm is null)
            return Drop(self_attn.forward(normed, positions)) + Drop(mlp.forward(normed)) + x; // HF's order of the sum
        if (pre_feedforward_layernorm is not null)
        {
            var attended = x + post_attention_layernorm.forward(self_attn.forward(normed, positions));
            return attended + post_feedforward_layernorm!.forward(mlp.forward(pre_feedforward_layernorm.forward(attended)));
        }
        var h = x + Drop(self_attn.forward(normed, positions));
        return h + Drop(mlp.forward(post_attention_layernorm.forward(h)));
    }
}

static class Cast
{
    /// <summary>A cast that skips the no-op, so a parameter is never wrapped in a temporary it could be disposed with.</summary>
    public static Tensor To(Tensor t, ScalarType type) => t.dtype == type ? t : t.to(type);
}
