using static TorchSharp.torch;

namespace Axolotl.Quantization;

/// <summary>
/// bitsandbytes' quantize_blockwise with its default code, the signed dynamic map (create_dynamic_map): fp32 values
/// in blocks, absmax per block, each value times 1/absmax mapped to the nearest of 256 sorted code values by the
/// CUDA kernel's rule (dQuantize: a 7-step binary search from index 127, then a midpoint test against the neighbour the
/// search last stepped away from; a value exactly on a midpoint stays at the search's pivot). Used for the absmax
/// values of double-quantized NF4 weights (block 256).
/// </summary>
internal sealed class Blockwise8Bit : IDisposable
{
    /// <summary>create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted, as fp32.</summary>
    public static readonly float[] DynamicMap = CreateDynamicMap();

    public Tensor Codes { get; }
    public Tensor Absmax { get; }
    public int BlockSize { get; }

    Blockwise8Bit(Tensor codes, Tensor absmax, int blockSize) { Codes = codes; Absmax = absmax; BlockSize = blockSize; }

    public long Bytes => Codes.numel() + Absmax.numel() * 4;

    /// <summary>
    /// For each exponent e = 0..6: the midpoints of linspace(0.1, 1, 2^e + 1) (fp32, as torch computes them), scaled
    /// by 10^(e-6) in fp32, with both signs; then 0 and 1. The map's ends are thus about ±0.993 and 1.0.
    /// </summary>
    static float[] CreateDynamicMap()
    {
        var values = new List<float>();
        using var scope = NewDisposeScope();
        for (int e = 0; e < 7; e++)
        {
            var bounds = linspace(0.1, 1, (1 << e) + 1, dtype: ScalarType.Float32, device: CPU); // a host table
            var means = (bounds.narrow(0, 0, bounds.shape[0] - 1) + bounds.narrow(0, 1, bounds.shape[0] - 1)) / 2.0;
            // Python multiplies by the float 10**(e-6) (an int for e = 6); torch rounds that scalar to fp32 first.
            var scaled = means * Math.Pow(10, e - 6);
            var positive = scaled.data<float>().ToArray();
            values.AddRange(positive);
            values.AddRange((means * -Math.Pow(10, e - 6)).data<float>().ToArray());
        }
        values.Add(0f);
        values.Add(1f);
        values.Sort();
        return values.ToArray();
    }

    public static Blockwise8Bit Quantize(Tensor values, int blockSize)
    {
        // The search over the code runs here in C#, on a host copy; the codes go back where the values were.
        var flat = values.detach().to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        int blocks = (flat.Length + blockSize - 1) / blockSize;
        var codes = new byte[flat.Length];
        var absmax = new float[blocks];
        for (int b = 0; b < blocks; b++)
        {
            int start = b * blockSize, end = Math.Min(start + blockSize, flat.Length);
            float max = 0;
            for (int i = start; i < end; i++) max = MathF.Max(max, MathF.Abs(flat[i]));
            absmax[b] = max;
            float reciprocal = 1.0f / max;
            for (int i = start; i < end; i++) codes[i] = Nearest(DynamicMap, flat[i] * reciprocal);
        }
        return new Blockwise8Bit(tensor(codes, device: values.device), tensor(absmax, device: values.device), blockSize);
    }

    public Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        long n = Codes.shape[0];
        var values = tensor(DynamicMap, device: Codes.device).index_select(0, Codes.to(ScalarType.Int64));
        var scale = Absmax.repeat_interleave(BlockSize).narrow(0, 0, n);
        return (values * scale).MoveToOuterDisposeScope();
    }

    /// <summary>bnb's dQuantize (not stochastic) over a sorted 256-entry code.</summary>
    internal static byte Nearest(float[] code, float x)
    {
        int pivot = 127, upperPivot = 255, lowerPivot = 0;
        float lower = -1.0f, upper = 1.0f;
        float val = code[pivot];
        for (int step = 64; step > 0; step >>= 1)
        {
            if (x > val) { lowerPivot = pivot; lower = val; pivot += step; }
            else { upperPivot = pivot; upper = val; pivot -= step; }
            val = code[pivot];
        }
        // The sentinels ±1 stand for indices 0 and 255 until the search has looked at them.
        if (upperPivot == 255) upper = code[255];
        if (lowerPivot == 0) lower = code[0];
        if (x > val) return (byte)(x > (upper + val) * 0.5f ? upperPivot : pivot);
        return (byte)(x < (lower + val) * 0.5f ? lowerPivot : pivot);
    }

    /// <summary>A copy on <paramref name="device"/>; this one is disposed.</summary>
    public Blockwise8Bit To(Device device)
    {
        var moved = new Blockwise8Bit(Codes.to(device).DetachFromDisposeScope(), Absmax.to(device).DetachFromDisposeScope(), BlockSize);
        Dispose();
        return moved;
    }

    public void Dispose()
    {
        Codes.Dispose();
        Absmax.Dispose();
    }
}
