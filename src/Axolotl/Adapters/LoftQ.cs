using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Adapters;

/// <summary>
/// LoftQ initialisation of a LoRA adapter (PEFT's loftq_init, what Axolotl asks for with
/// <c>peft: {loftq_config: {loftq_bits: 4}}</c>): the base weight W is quantized, the residual W − deq(Q(W)) is split
/// by SVD, and the adapter starts as its top-r part, B = U_r·√S_r and A = √S_r·V_rᵀ, so that deq(Q) + B·A ≈ W. As in
/// PEFT, A and B are not divided by the LoRA scale alpha/r: the forward pass adds scale·B·A.
/// <para>With adapter: lora the base stays a full-precision Linear whose weight becomes deq(Q(W)) (PEFT replaces it
/// with the dequantized weight in its own dtype; 4 bits: bitsandbytes NF4, blocks of 64, no double quantization;
/// 8 bits: row-wise int8). With qlora the base is stored as the model's own NF4 weight, and the residual is taken
/// against exactly that (PEFT's replace_lora_weights_loftq for a bnb 4-bit model). Axolotl passes no loftq_iter, so
/// PEFT's one iteration runs; <see cref="Decompose"/> takes more for the alternating form.</para>
/// </summary>
internal static class LoftQ
{
    /// <summary>
    /// PEFT's loftq_init for one weight: for each iteration quantize the current target (W, then W − B·A), take the
    /// residual W − deq and its rank-<paramref name="rank"/> SVD. Returns deq (fp32, the new base), A [r, in] and B [out, r].
    /// </summary>
    public static (Tensor Dequantized, Tensor A, Tensor B) Decompose(Tensor weight, int rank, Func<Tensor, Tensor> quantizeDequantize, int iterations = 1)
    {
        if (iterations < 1) throw new ArgumentOutOfRangeException(nameof(iterations));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var w = weight.detach().to(ScalarType.Float32);
        if (rank > Math.Min(w.shape[0], w.shape[1]))
            throw new UserError($"LoftQ: lora_r {rank} is larger than a target weight's smaller side ({Math.Min(w.shape[0], w.shape[1])}); the SVD has no more components.");
        var target = w;
        Tensor dequantized = null!, a = null!, b = null!;
        for (int i = 0; i < iterations; i++)
        {
            dequantized = quantizeDequantize(target).to(ScalarType.Float32);
            var residual = w - dequantized;
            var (u, s, vh) = linalg.svd(residual, fullMatrices: false);
            var rootS = s.narrow(0, 0, rank).sqrt();
            b = u.narrow(1, 0, rank) * rootS.unsqueeze(0);
            a = rootS.unsqueeze(1) * vh.narrow(0, 0, rank);
            target = w - b.matmul(a);
        }
        return (dequantized.MoveToOuterDisposeScope(), a.contiguous().MoveToOuterDisposeScope(), b.contiguous().MoveToOuterDisposeScope());
    }

    /// <summary>The quantize → dequantize round trip LoftQ uses for <paramref name="bits"/> with a full-precision base.</summary>
    public static Func<Tensor, Tensor> RoundTrip(int bits) => bits switch
    {
        4 => w => { using var q = Nf4Weight.Quantize(w, doubleQuant: false); return q.Dequantize(ScalarType.Float32); },
        8 => w => { using var q = Int8Weight.Quantize(w); return q.Dequantize(ScalarType.Float32); },
        _ => throw new UserError($"peft.loftq_config.loftq_bits must be 4 or 8, not {bits}."),
    };

    /// <summary>
    /// Before the adapter is applied: for each layer it will wrap, works out A and B. A full-precision Linear gets
    /// deq(Q(W)) as its weight now (PEFT's loftq_init); a layer already quantized at load (qlora) keeps its NF4 weight,
    /// and its full-precision W is read again with <paramref name="fullPrecisionWeight"/> (by state-dict key), as PEFT's
    /// replace_lora_weights_loftq reads the safetensors. With <paramref name="computeAdapter"/> false (a resume, whose
    /// adapter comes from the checkpoint) only the base is replaced. Call <see cref="Initialization.CopyInto"/> once the
    /// adapter is applied.
    /// </summary>
    public static Initialization Prepare(nn.Module model, LoraSettings settings, int bits, bool computeAdapter,
                                         Func<string, Tensor?>? fullPrecisionWeight = null, Action<string>? progress = null)
    {
        var roundTrip = RoundTrip(bits);
        var targets = Lora.TargetPaths(model, settings);
        var result = new Initialization();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var lastReport = clock.Elapsed;
        using var _ = no_grad();
        for (int i = 0; i < targets.Count; i++)
        {
            var (parent, leaf) = ModuleTree.Parent(model, targets[i]);
            using var scope = NewDisposeScope();
            switch (parent.named_children().First(c => c.name == leaf).module)
            {
                case Linear linear when computeAdapter:
                    var (dequantized, a, b) = Decompose(linear.weight, settings.Rank, roundTrip);
                    linear.weight.copy_(dequantized);
                    result.Adapters[targets[i]] = (a.DetachFromDisposeScope(), b.DetachFromDisposeScope());
                    break;
                case Linear linear:
                    linear.weight.copy_(roundTrip(linear.weight));
                    break;
                case QuantizedLinear quantized when computeAdapter:
                    var key = targets[i] + ".weight";
                    var w = fullPrecisionWeight?.Invoke(key) ?? throw new UserError($"LoftQ: the full-precision weight '{key}' was not found in base_model's safetensors.");
                    var stored = quantized.Weight.Dequantize(ScalarType.Float32);
                    var (_, qa, qb) = Decompose(w, settings.Rank, _ => stored);
                    result.Adapters[targets[i]] = (qa.DetachFromDisposeScope(), qb.DetachFromDisposeScope());
                    break;
            }
            if (clock.Elapsed - lastReport > TimeSpan.FromSeconds(10))
            {
                progress?.Invoke($"LoftQ: {i + 1} of {targets.Count} layers initialised ({clock.Elapsed.TotalSeconds:F0} s).");
                lastReport = clock.Elapsed;
            }
        }
        if (targets.Count > 0) progress?.Invoke(computeAdapter
            ? $"LoftQ ({bits}-bit): {result.Adapters.Count} adapters initialised from the SVD of the quantisation residual (rank {settings.Rank}); full-precision base weights replaced by their quantized values, as PEFT does; {clock.Elapsed.TotalSeconds:F1} s."
            : $"LoftQ ({bits}-bit): base weights replaced by their quantized values, as when the adapter was initialised.");
        return result;
    }

    /// <summary>Reads a tensor of a model folder's safetensors (one file or shards) by key; null when none holds it.</summary>
    public static Func<string, Tensor?> WeightsIn(string modelDir)
    {
        var files = ShardedSafetensors.WeightFiles(modelDir).Select(SafetensorsFile.Open).ToList();
        return key => files.FirstOrDefault(f => f.Entries.ContainsKey(key))?.Read(key);
    }

    /// <summary>A and B per wrapped path, fp32, until copied into the adapter.</summary>
    public sealed class Initialization : IDisposable
    {
        internal readonly Dictionary<string, (Tensor A, Tensor B)> Adapters = [];

        public void CopyInto(nn.Module model)
        {
            using var _ = no_grad();
            foreach (var (name, layer) in Lora.Layers(model))
            {
                if (!Adapters.TryGetValue(name, out var ab)) continue;
                layer.lora_A.weight.copy_(ab.A);
                layer.lora_B.weight.copy_(ab.B);
            }
        }

        public void Dispose()
        {
            foreach (var (a, b) in Adapters.Values) { a.Dispose(); b.Dispose(); }
            Adapters.Clear();
        }
    }
}
