using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

// Field names in this file are the Hugging Face state-dict names (snake_case on purpose): TorchSharp registers
// submodules and parameters under their field names, so named_parameters() yields HF's keys with no mapping table.
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

/// <summary>HF's RMSNorm: normalise in fp32, cast back, then scale (w * (x * rsqrt(mean(x^2) + eps))).</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    readonly double _eps;

    public RmsNorm(long hidden, double eps, ScalarType dtype) : base(nameof(RmsNorm))
    {
        weight = new Parameter(ones(hidden, dtype: dtype));
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var inputType = x.dtype;
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean([-1], keepdim: true);
        h = h * rsqrt(variance + _eps);
        return Cast.To(weight, inputType) * h.to(inputType);
    }
}

/// <summary>Rotary position embedding in the split-halves layout (HF's rotate_half), angles computed in fp32.</summary>
public static class Rope
{
    public static (Tensor Cos, Tensor Sin) Angles(long seqLen, int headDim, double theta, ScalarType type, Device device)
    {
        var exponent = arange(0, headDim, 2, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32) / headDim;
        var invFreq = 1.0f / full_like(exponent, theta).pow(exponent);
        var positions = arange(0, seqLen, dtype: ScalarType.Int64, device: device).to(ScalarType.Float32);
        var freqs = outer(positions, invFreq);
        var emb = cat([freqs, freqs], -1);
        return (emb.cos().to(type), emb.sin().to(type));
    }

    /// <summary>x: [batch, heads, seq, head_dim]; cos/sin: [seq, head_dim].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = cat([-x2, x1], -1);
        return x * cos + rotated * sin;
    }
}

public sealed class Attention : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor> q_proj, k_proj, v_proj, o_proj;
    readonly int _heads, _kvHeads, _headDim;

    public Attention(DecoderConfig c, ScalarType dtype) : base("self_attn")
    {
        _heads = c.NumHeads; _kvHeads = c.NumKeyValueHeads; _headDim = c.HeadDim;
        q_proj = new Linear(c.HiddenSize, c.NumHeads * c.HeadDim, c.QkvBias, dtype);
        k_proj = new Linear(c.HiddenSize, c.NumKeyValueHeads * c.HeadDim, c.QkvBias, dtype);
        v_proj = new Linear(c.HiddenSize, c.NumKeyValueHeads * c.HeadDim, c.QkvBias, dtype);
        o_proj = new Linear(c.NumHeads * c.HeadDim, c.HiddenSize, c.OutputBias, dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor cos, Tensor sin)
    {
        long batch = x.shape[0], seq = x.shape[1];
        var q = q_proj.forward(x).view(batch, seq, _heads, _headDim).transpose(1, 2);
        var k = k_proj.forward(x).view(batch, seq, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.forward(x).view(batch, seq, _kvHeads, _headDim).transpose(1, 2);
        q = Rope.Apply(q, cos, sin);
        k = Rope.Apply(k, cos, sin);
        if (_kvHeads != _heads)
        {
            // Grouped-query attention: each KV head serves heads/kv_heads consecutive query heads (HF's repeat_kv).
            int groups = _heads / _kvHeads;
            k = k.repeat_interleave(groups, 1);
            v = v.repeat_interleave(groups, 1);
        }
        // Right padding needs no extra mask: a real token never attends to a later (padded) position.
        var attended = F.scaled_dot_product_attention(q, k, v, null, 0.0, true);
        return o_proj.forward(attended.transpose(1, 2).reshape(batch, seq, _heads * _headDim));
    }
}

public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor> gate_proj, up_proj, down_proj;

    public Mlp(DecoderConfig c, ScalarType dtype) : base("mlp")
    {
        gate_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias, dtype);
        up_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias, dtype);
        down_proj = new Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias, dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => down_proj.forward(F.silu(gate_proj.forward(x)) * up_proj.forward(x));
}

public sealed class DecoderLayer : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    public Attention self_attn;
    public Mlp mlp;
    public RmsNorm input_layernorm, post_attention_layernorm;

    public DecoderLayer(DecoderConfig c, ScalarType dtype) : base(nameof(DecoderLayer))
    {
        self_attn = new Attention(c, dtype);
        mlp = new Mlp(c, dtype);
        input_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor cos, Tensor sin)
    {
        var h = x + self_attn.forward(input_layernorm.forward(x), cos, sin);
        return h + mlp.forward(post_attention_layernorm.forward(h));
    }
}

static class Cast
{
    /// <summary>A cast that skips the no-op, so a parameter is never wrapped in a temporary it could be disposed with.</summary>
    public static Tensor To(Tensor t, ScalarType type) => t.dtype == type ? t : t.to(type);
}
