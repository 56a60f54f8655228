using Axolotl.Quantization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Adapters;

#pragma warning disable IDE1006 // PEFT's state-dict names

/// <summary>
/// PEFT's LoRA layer: y = base(x) + B(A(dropout(x))) * alpha / r (alpha / sqrt(r) with rsLoRA), with the base frozen.
/// A starts kaiming-uniform (a = sqrt(5)), B at zero, so a fresh adapter leaves the model unchanged. The base is a
/// plain Linear or a quantized one (QLoRA, load_in_8bit).
/// <para>DoRA (PEFT 0.10's formula): with W the base weight (dequantized if quantized), ΔW = scale·B·A and
/// m = lora_magnitude_vector (one value per output, initialised to the row norms ‖W + ΔW‖ over the inputs),
/// y = base(x) + (m/n − 1) ⊙ (x Wᵀ) + (m/n) ⊙ scale·B(A(x)) with n = ‖W + ΔW‖ recomputed each call and detached
/// from the graph (DoRA paper §4.3), x the dropped-out input. Without dropout this is (m/n) ⊙ x(W + ΔW)ᵀ + bias.</para>
/// </summary>
internal sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    public nn.Module<Tensor, Tensor> base_layer;
    public Linear lora_A;
    public Linear lora_B;
    public Parameter? lora_magnitude_vector;
    public double Scaling { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    readonly double _dropout;

    public LoraLinear(nn.Module<Tensor, Tensor> baseLayer, int rank, double alpha, double dropout, bool useRsLora, bool useDora = false)
        : base(nameof(LoraLinear))
    {
        base_layer = baseLayer;
        (InFeatures, OutFeatures) = baseLayer switch
        {
            Linear l => (l.InFeatures, l.OutFeatures),
            QuantizedLinear q => (q.InFeatures, q.OutFeatures),
            _ => throw new ArgumentException($"LoRA cannot wrap a {baseLayer.GetType().Name}"),
        };
        // Adapter weights stay fp32 whatever the base holds: they are the optimizer's master copies.
        lora_A = new Linear(InFeatures, rank, false, ScalarType.Float32);
        lora_B = new Linear(rank, OutFeatures, false, ScalarType.Float32);
        Scaling = useRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
        _dropout = dropout;
        using (no_grad())
        {
            nn.init.kaiming_uniform_(lora_A.weight, Math.Sqrt(5));
            if (useDora)
            {
                using var norm = WeightNorm();
                lora_magnitude_vector = new Parameter(norm.clone());
            }
        }
        RegisterComponents();
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
    }

    public bool UseDora => lora_magnitude_vector is not null;

    /// <summary>While set, the layer is its base alone (PEFT's disable_adapter): the reference model of preference training.</summary>
    public bool Disabled { get; set; }

    public override Tensor forward(Tensor x)
    {
        var result = base_layer.forward(x);
        if (Disabled) return result;
        var input = _dropout > 0 ? nn.functional.dropout(x, _dropout, training) : x;
        // Scaled on the rank-wide intermediate rather than the output: the same product, a smaller elementwise pass.
        var lora = lora_B.forward(lora_A.forward(input) * Scaling);
        if (lora_magnitude_vector is null) return result + lora;
        using var norm = WeightNorm();
        var factor = (lora_magnitude_vector / norm).to(x.dtype);
        using var weight = BaseWeight(x.dtype);
        return result + (factor - 1) * nn.functional.linear(input, weight) + factor * lora;
    }

    /// <summary>The base weight in <paramref name="type"/> (dequantized for a quantized base).</summary>
    public Tensor BaseWeight(ScalarType type) => base_layer switch
    {
        Linear l => l.weight.detach().to(type, copy: true),
        QuantizedLinear q => q.Weight.Dequantize(type),
        _ => throw new InvalidOperationException(),
    };

    /// <summary>‖W + ΔW‖ per output row, in fp32, detached: the DoRA denominator.</summary>
    public Tensor WeightNorm()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var combined = BaseWeight(ScalarType.Float32) + Delta().to(ScalarType.Float32);
        return linalg.vector_norm(combined, 2, [1]).MoveToOuterDisposeScope();
    }

    /// <summary>The weight update this adapter adds to the base: scale * B @ A.</summary>
    public Tensor Delta() => lora_B.weight.matmul(lora_A.weight) * Scaling;
}
