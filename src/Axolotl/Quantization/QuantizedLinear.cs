using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Quantization;

#pragma warning disable IDE1006 // HF state-dict names

/// <summary>A frozen weight held in a compact form, dequantized when used.</summary>
internal interface IQuantizedWeight : IDisposable
{
    long[] Shape { get; }
    /// <summary>The weight in <paramref name="type"/>, rounded first to the dtype it was quantized from (as bnb does).</summary>
    Tensor Dequantize(ScalarType? type = null);
    long Bytes { get; }
    /// <summary>The same weight on <paramref name="device"/>; this one is disposed when it had to move.</summary>
    IQuantizedWeight To(Device device);
    /// <summary>
    /// As <see cref="Dequantize"/>, for one matmul: the result may be a view of a per-thread buffer that the next call
    /// overwrites, so it must not outlive the caller's use (disposing it is harmless).
    /// </summary>
    Tensor DequantizeForMatmul(ScalarType type) => Dequantize(type);
}

/// <summary>
/// One reused buffer per thread and dtype for weights dequantized for a single matmul. Fresh multi-megabyte tensors
/// are each a new mmap the kernel must fault in page by page, and a QLoRA step dequantizes every weight twice (forward
/// and backward), so the buffer grows to the largest weight once and stays.
/// </summary>
static class DequantizeBuffer
{
    [ThreadStatic] static Dictionary<ScalarType, Tensor>? _buffers;

    public static Tensor Take(long[] shape, ScalarType type)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        _buffers ??= [];
        if (!_buffers.TryGetValue(type, out var buffer) || buffer.numel() < count)
        {
            buffer?.Dispose();
            buffer = _buffers[type] = empty(count, dtype: type, device: CPU).DetachFromDisposeScope();
        }
        return buffer.narrow(0, 0, count).view(shape);
    }
}

internal sealed class Nf4Quantized(Nf4Weight w) : IQuantizedWeight
{
    public Nf4Weight Stored => w;
    public long[] Shape => w.Shape;
    public Tensor Dequantize(ScalarType? type = null) => w.Dequantize(type);
    public long Bytes => w.Bytes;
    public IQuantizedWeight To(Device device) => Runtime.ComputeDevice.Same(w.Packed.device, device) ? this : new Nf4Quantized(w.To(device));
    public Tensor DequantizeForMatmul(ScalarType type)
    {
        if (w.Packed.device_type != DeviceType.CPU || !w.CanDequantizeInto(type)) return w.Dequantize(type);
        var destination = DequantizeBuffer.Take(w.Shape, type);
        w.DequantizeInto(destination);
        return destination;
    }
    public void Dispose() => w.Dispose();
}

internal sealed class Int8Quantized(Int8Weight w) : IQuantizedWeight
{
    public Int8Weight Stored => w;
    public long[] Shape => [w.Codes.shape[0], w.Codes.shape[1]];
    public Tensor Dequantize(ScalarType? type = null) => w.Dequantize(type);
    public long Bytes => w.Bytes;
    public IQuantizedWeight To(Device device) => Runtime.ComputeDevice.Same(w.Codes.device, device) ? this : new Int8Quantized(w.To(device));
    public void Dispose() => w.Dispose();
}

/// <summary>
/// bnb's Linear4bit / Linear8bitLt for a frozen base: y = x Wᵀ + b with W dequantized to x's dtype for the forward
/// pass, freed, and dequantized again in the backward pass for the input gradient (W gets none), so no full-precision
/// copy of any layer outlives its own matmul. The bias stays a regular (frozen) parameter, as in bnb.
/// </summary>
internal sealed class QuantizedLinear : nn.Module<Tensor, Tensor>
{
    public Parameter? bias;
    public IQuantizedWeight Weight { get; private set; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    /// <summary>bnb_4bit_compute_dtype: inputs are cast to it and outputs back; null computes in the input's dtype.</summary>
    public ScalarType? ComputeType { get; }

    public QuantizedLinear(IQuantizedWeight weight, Parameter? bias, ScalarType? computeType = null) : base(nameof(QuantizedLinear))
    {
        Weight = weight;
        ComputeType = computeType;
        OutFeatures = weight.Shape[0];
        InFeatures = weight.Shape[1];
        this.bias = bias;
        if (bias is not null) bias.requires_grad = false;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var type = ComputeType ?? x.dtype;
        var input = x.dtype == type ? x : x.to(type);
        var b = bias is null ? null : bias.dtype == type ? bias : bias.to(type);
        var y = DequantizedMatmul.apply(input, b, Weight);
        return y.dtype == x.dtype ? y : y.to(x.dtype);
    }

    /// <summary>Module.to(device) moves parameters and buffers; the codes and scales are neither, so they move here.</summary>
    protected override nn.Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking)
    {
        Weight = Weight.To(new Device(deviceType, deviceType == DeviceType.CUDA ? deviceIndex : -1));
        return base._to(deviceType, deviceIndex, non_blocking);
    }

    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
    {
        Weight = Weight.To(device);
        return base._to(device, dtype, non_blocking);
    }

    /// <summary>Stores <paramref name="weight"/> in place of the current weight, quantized the same way (ReLoRA's merge
    /// into a quantized base: dequantize, add, re-quantize).</summary>
    public void Requantize(Tensor weight)
    {
        IQuantizedWeight next;
        // The stored form lives as long as the layer, whatever dispose scope the caller runs in.
        switch (Weight)
        {
            case Nf4Quantized n:
                var nf4 = Nf4Weight.Quantize(weight.to(n.Stored.DType), n.Stored.NestedAbsmax != null);
                foreach (var t in new[] { nf4.Packed, nf4.Absmax, nf4.NestedAbsmax?.Codes, nf4.NestedAbsmax?.Absmax }) t?.DetachFromDisposeScope();
                next = new Nf4Quantized(nf4);
                break;
            case Int8Quantized:
                var int8 = Int8Weight.Quantize(weight);
                int8.Codes.DetachFromDisposeScope();
                int8.RowAbsmax.DetachFromDisposeScope();
                next = new Int8Quantized(int8);
                break;
            default: throw new InvalidOperationException($"cannot re-quantize a {Weight.GetType().Name}");
        }
        Weight.Dispose();
        Weight = next;
    }

    /// <summary>Bytes of the stored weight (codes and scales), without the bias.</summary>
    public long WeightBytes => Weight.Bytes;

    protected override void Dispose(bool disposing)
    {
        if (disposing) Weight.Dispose();
        base.Dispose(disposing);
    }

    sealed class DequantizedMatmul : autograd.SingleTensorFunction<DequantizedMatmul>
    {
        public override string Name => "DequantizedMatmul";

        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var weight = (IQuantizedWeight)vars[2];
            ctx.save_data("weight", weight);
            ctx.save_data("type", x.dtype);
            // Decoding's few-row products read NF4 codes as they are stored instead of dequantizing every weight per token.
            if (weight is Nf4Quantized { Stored: var nf4 } && Nf4Gemv.Applies(x, nf4, vars[1] as Tensor))
                return Nf4Gemv.Linear(x, nf4, vars[1] as Tensor);
            using var w = weight.DequantizeForMatmul(x.dtype);
            return Models.DecodeMatmul.LinearOrTorch(x, w, vars[1] as Tensor);
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var weight = (IQuantizedWeight)ctx.get_data("weight");
            var type = (ScalarType)ctx.get_data("type");
            using var w = weight.DequantizeForMatmul(type);
            var gradInput = gradOutput.to(type).matmul(w);
            return [gradInput, null!, null!];
        }
    }

    /// <summary>Replaces a Linear by its quantized form; the original weight is disposed.</summary>
    public static QuantizedLinear From(Linear linear, Func<Tensor, IQuantizedWeight> quantize, ScalarType? computeType = null) =>
        From(linear, quantize(linear.weight), computeType);

    /// <summary>A Linear's place taken by a weight quantized elsewhere (from the checkpoint); the Linear is disposed, its bias kept.</summary>
    public static QuantizedLinear From(Linear linear, IQuantizedWeight q, ScalarType? computeType = null)
    {
        var b = linear.bias is null ? null : new Parameter(linear.bias.detach().clone(), false);
        linear.Dispose();
        return new QuantizedLinear(q, b, computeType);
    }
}
