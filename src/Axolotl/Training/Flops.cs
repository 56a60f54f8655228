using System.Diagnostics;
using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Training;

/// <summary>
/// Training FLOPs per token, the numerator of model FLOPs utilisation (MFU). Matmul work only, PaLM's convention
/// (Chowdhery et al. 2022, appendix B): a weight matrix of N parameters costs 2N FLOPs per token forward, 2N for the
/// gradient of its input and 2N for the gradient of the weight itself, the last one only when it is trained; attention
/// scores and their weighted sum cost 12 · layers · seq · (heads · head_dim) per token, forward and backward, causal mask
/// ignored.
/// <code>flops/token = 6·N_trainable + 4·N_frozen + 12·layers·seq·heads·head_dim</code>
/// N counts the matmul weights: every parameter except the input embedding (a lookup), which counts once when tied to
/// the LM head. A full fine-tune has N_frozen = 0, so this is 6·N + attention; LoRA trains the adapters only.
/// </summary>
internal static class Flops
{
    public const string Formula = "6*N_trainable + 4*N_frozen + 12*layers*seq*heads*head_dim (N: matmul weights, i.e. all parameters minus the untied input embedding; seq: mean tokens per example)";

    /// <param name="totalParameters">Every parameter of the model, adapters included.</param>
    /// <param name="trainableParameters">Those with requires_grad.</param>
    /// <param name="embeddingParameters">The input embedding's parameters when it is not tied to the LM head, else 0.</param>
    public static double PerToken(long totalParameters, long trainableParameters, long embeddingParameters,
                                  int layers, int attentionWidth, double sequenceLength)
    {
        double matmul = totalParameters - embeddingParameters;
        double trainable = Math.Min(trainableParameters, matmul);
        double frozen = matmul - trainable;
        return 6 * trainable + 4 * frozen + 12.0 * layers * sequenceLength * attentionWidth;
    }

    public static double PerToken(DecoderConfig config, long totalParameters, long trainableParameters, double sequenceLength) =>
        PerToken(totalParameters, trainableParameters,
                 config.TieWordEmbeddings ? 0 : (long)config.VocabSize * config.HiddenSize,
                 config.NumLayers, config.NumHeads * config.HeadDim, sequenceLength);

    /// <summary>
    /// GFLOP/s of <paramref name="repetitions"/> square matmuls of <paramref name="size"/> in <paramref name="dtype"/>
    /// after one warm-up (thread pool, kernel selection): the machine's peak that MFU is measured against. Constant
    /// inputs, so the global RNG that training draws from is untouched.
    /// </summary>
    public static List<double> MeasureMatmulGflops(ScalarType dtype, int size, int repetitions, Device? device = null)
    {
        double flops = 2.0 * size * size * size;
        using var a = full(size, size, 0.5, dtype: dtype, device: device);
        using var b = full(size, size, 0.25, dtype: dtype, device: device);
        // CUDA kernels return before they finish: the clock stops only once the device is idle.
        void Sync() { if (a.device_type == TorchSharp.DeviceType.CUDA) cuda.synchronize(a.device); }
        using (matmul(a, b)) Sync();
        var gflops = new List<double>();
        for (int r = 0; r < repetitions; r++)
        {
            var clock = Stopwatch.StartNew();
            using var c = matmul(a, b);
            Sync();
            gflops.Add(flops / clock.Elapsed.TotalSeconds / 1e9);
        }
        return gflops;
    }
}
