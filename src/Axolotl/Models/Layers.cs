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
/// y = x W^T + b, computed in the input's dtype. Trainable weights can stay fp32 (master copies) while the
/// activations run in bf16: the cast happens here, and autograd carries fp32 gradients back to the master.
/// </summary>
public sealed class Linear : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    public Parameter? bias;
    public long InFeatures { get; }
    public long OutFeatures { get; }

    public Linear(long inFeatures, long outFeatures, bool hasBias, ScalarType dtype) : base(nameof(Linear))
    {
        InFeatures = inFeatures; OutFeatures = outFeatures;
        weight = new Parameter(zeros(outFeatures, inFeatures, dtype: dtype));
        bias = hasBias ? new Parameter(zeros(outFeatures, dtype: dtype)) : null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        F.linear(x, Cast.To(weight, x.dtype), bias is null ? null : Cast.To(bias, x.dtype));
}

/// <summary>Token embeddings; the lookup is returned in the model's compute dtype.</summary>
public sealed class Embedding : nn.Module<Tensor, Tensor>
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
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
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
        var inputType = x.dtype;
        var h = x.to(ScalarType.Float32);
        h = h * rsqrt(h.pow(2).mean([-1], keepdim: true) + _eps);
        if (Offset == 0) return Cast.To(weight, inputType) * h.to(inputType);
        return (h * (weight.to(ScalarType.Float32) + Offset)).to(inputType);
    }
}

/// <summary>torch.nn.LayerNorm with weight and bias, in the input's dtype (phi).</summary>
public sealed class LayerNorm : nn.Module<Tensor, Tensor>
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

public static class Parts
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

/// <summary>What every layer needs about positions: rotary angles, and a mask when plain causal is not enough.</summary>
public sealed record Positions(Tensor Cos, Tensor Sin, Tensor? Mask);

/// <summary>Rotary position embedding in the split-halves layout (HF's rotate_half), angles computed in fp32.</summary>
public static class Rope
{
    public static (Tensor Cos, Tensor Sin) Angles(long seqLen, int rotaryDim, double theta, ScalarType type, Device device)
    {
        var exponent = arange(0, rotaryDim, 2, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32) / rotaryDim;
        var invFreq = 1.0f / full_like(exponent, theta).pow(exponent);
        var positions = arange(0, seqLen, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32);
        var freqs = outer(positions, invFreq);
        var emb = cat([freqs, freqs], -1);
        return (emb.cos().to(type), emb.sin().to(type));
    }

    /// <summary>x: [batch, heads, seq, head_dim]; cos/sin: [seq, rotary_dim]. Dims past rotary_dim pass through (partial rotary).</summary>
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

public sealed class Attention : nn.Module<Tensor, Positions, Tensor>
{
    public nn.Module<Tensor, Tensor> q_proj, k_proj, v_proj, o_proj;
    readonly int _heads, _kvHeads, _headDim;
    readonly double _dropout;

    public Attention(DecoderConfig c, ScalarType dtype) : base("self_attn")
    {
        _heads = c.NumHeads; _kvHeads = c.NumKeyValueHeads; _headDim = c.HeadDim; _dropout = c.AttentionDropout;
        q_proj = new Linear(c.HiddenSize, c.NumHeads * c.HeadDim, c.QkvBias, dtype);
        k_proj = new Linear(c.HiddenSize, c.NumKeyValueHeads * c.HeadDim, c.QkvBias, dtype);
        v_proj = new Linear(c.HiddenSize, c.NumKeyValueHeads * c.HeadDim, c.QkvBias, dtype);
        o_proj = new Linear(c.NumHeads * c.HeadDim, c.HiddenSize, c.OutputBias, dtype);
        register_module("q_proj", q_proj);
        register_module("k_proj", k_proj);
        register_module("v_proj", v_proj);
        register_module(c.Names.AttentionOutput, o_proj);
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    public override Tensor forward(Tensor x, Positions positions)
    {
        long batch = x.shape[0], seq = x.shape[1];
        var q = q_proj.forward(x).view(batch, seq, _heads, _headDim).transpose(1, 2);
        var k = k_proj.forward(x).view(batch, seq, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.forward(x).view(batch, seq, _kvHeads, _headDim).transpose(1, 2);
        q = Rope.Apply(q, positions.Cos, positions.Sin);
        k = Rope.Apply(k, positions.Cos, positions.Sin);
        if (_kvHeads != _heads)
        {
            // Grouped-query attention: each KV head serves heads/kv_heads consecutive query heads (HF's repeat_kv).
            int groups = _heads / _kvHeads;
            k = k.repeat_interleave(groups, 1);
            v = v.repeat_interleave(groups, 1);
        }
        // Right padding needs no extra mask: a real token never attends to a later (padded) position.
        double p = training ? _dropout : 0.0;
        var attended = positions.Mask is null
            ? F.scaled_dot_product_attention(q, k, v, null, p, true)
            : F.scaled_dot_product_attention(q, k, v, positions.Mask, p, false);
        return o_proj.forward(attended.transpose(1, 2).reshape(batch, seq, _heads * _headDim));
    }
}

public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor>? gate_proj;
    public nn.Module<Tensor, Tensor> up_proj, down_proj;
    readonly string _activation;

    public Mlp(DecoderConfig c, ScalarType dtype) : base("mlp")
    {
        _activation = c.Activation;
        if (c.GatedMlp)
        {
            gate_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias, dtype);
            register_module(c.Names.MlpGate, gate_proj);
        }
        up_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias, dtype);
        down_proj = new Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias, dtype);
        register_module(c.Names.MlpUp, up_proj);
        register_module(c.Names.MlpDown, down_proj);
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    public override Tensor forward(Tensor x) => down_proj.forward(gate_proj is null
        ? Parts.Activate(_activation, up_proj.forward(x))
        : Parts.Activate(_activation, gate_proj.forward(x)) * up_proj.forward(x));
}

public sealed class DecoderLayer : nn.Module<Tensor, Positions, Tensor>
{
    public Attention self_attn;
    public Mlp mlp;
    public nn.Module<Tensor, Tensor> input_layernorm;
    public nn.Module<Tensor, Tensor>? post_attention_layernorm;
    readonly double _residualDropout;

    public DecoderLayer(DecoderConfig c, ScalarType dtype) : base(nameof(DecoderLayer))
    {
        self_attn = new Attention(c, dtype);
        mlp = new Mlp(c, dtype);
        input_layernorm = Parts.Norm(c, dtype);
        post_attention_layernorm = c.ParallelBlock ? null : Parts.Norm(c, dtype);
        _residualDropout = c.ResidualDropout;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Positions positions)
    {
        Tensor Drop(Tensor t) => Parts.Dropout(t, _residualDropout, training);
        var normed = input_layernorm.forward(x);
        if (post_attention_layernorm is null)
            return Drop(self_attn.forward(normed, positions)) + Drop(mlp.forward(normed)) + x; // HF's order of the sum
        var h = x + Drop(self_attn.forward(normed, positions));
        return h + Drop(mlp.forward(post_attention_layernorm.forward(h)));
    }
}

static class Cast
{
    /// <summary>A cast that skips the no-op, so a parameter is never wrapped in a temporary it could be disposed with.</summary>
    public static Tensor To(Tensor t, ScalarType type) => t.dtype == type ? t : t.to(type);
}
