using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Adapters;

#pragma warning disable IDE1006 // PEFT's state-dict names

/// <summary>
/// PEFT's LoRA layer: y = base(x) + B(A(dropout(x))) * alpha / r, with the base frozen. A starts kaiming-uniform
/// (a = sqrt(5)), B at zero, so a fresh adapter leaves the model unchanged.
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    public Linear base_layer;
    public Linear lora_A;
    public Linear lora_B;
    public double Scaling { get; }
    readonly double _dropout;

    public LoraLinear(Linear baseLayer, int rank, double alpha, double dropout, bool useRsLora) : base(nameof(LoraLinear))
    {
        base_layer = baseLayer;
        // Adapter weights stay fp32 whatever the base holds: they are the optimizer's master copies.
        lora_A = new Linear(baseLayer.InFeatures, rank, false, ScalarType.Float32);
        lora_B = new Linear(rank, baseLayer.OutFeatures, false, ScalarType.Float32);
        Scaling = useRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
        _dropout = dropout;
        using (no_grad())
            nn.init.kaiming_uniform_(lora_A.weight, Math.Sqrt(5));
        RegisterComponents();
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
    }

    public override Tensor forward(Tensor x)
    {
        var result = base_layer.forward(x);
        var input = _dropout > 0 ? nn.functional.dropout(x, _dropout, training) : x;
        return result + lora_B.forward(lora_A.forward(input)) * Scaling;
    }

    /// <summary>The weight update this adapter adds to the base: scale * B @ A.</summary>
    public Tensor Delta() => lora_B.weight.matmul(lora_A.weight) * Scaling;
}
