using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// Gradient checkpointing of one decoder layer: the forward pass keeps only the layer's input; the backward pass runs
/// the layer again with grad enabled and the torch RNG state it saw the first time (so dropout masks are the same) and
/// takes the gradients of the input and of the layer's trainable weights from that recomputation.
/// </summary>
/// <remarks>
/// The trainable weights are passed as inputs of the function, so autograd routes their gradients through it even
/// when the hidden state needs none (a LoRA run's frozen embeddings): transformers needs enable_input_require_grads
/// for that case, this does not.
/// </remarks>
internal sealed class GradientCheckpoint : autograd.SingleTensorFunction<GradientCheckpoint>
{
    public override string Name => nameof(GradientCheckpoint);

    /// <summary>
    /// layer(x, positions) with the activations inside the layer recomputed in backward instead of kept.
    /// <paramref name="cudaSeed"/>: the seed the CUDA generators were given just before (GPU dropout), set again for the
    /// recomputation, since TorchSharp cannot save and restore a CUDA generator's state as it does the CPU one's.
    /// </summary>
    public static Tensor Run(DecoderLayer layer, Tensor x, Positions positions, long? cudaSeed = null) =>
        apply([layer, positions, cudaSeed ?? (object)false, x, .. TrainableWeights(layer)]);

    /// <summary>Test seam: layer forwards run without keeping activations, and those recomputed in backward.</summary>
    internal static int CheckpointedForwards, Recomputations;

    static IEnumerable<Tensor> TrainableWeights(DecoderLayer layer) => layer.parameters().Where(p => p.requires_grad);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (layer, positions, x) = ((DecoderLayer)vars[0], (Positions)vars[1], (Tensor)vars[3]);
        Interlocked.Increment(ref CheckpointedForwards);
        ctx.save_data("cudaSeed", vars[2]);
        using (var rng = random.get_rng_state()) ctx.save_data("rng", rng.bytes.ToArray());
        ctx.save_data("layer", layer);
        ctx.save_data("positions", positions);
        ctx.save_data("inputNeedsGrad", x.requires_grad);
        ctx.save_for_backward([x]);
        // apply runs this with grad disabled, so autograd keeps nothing inside; the scope frees the layer's
        // intermediates now instead of at the end of the step (the caller's scope would hold every layer's until then).
        using var scope = NewDisposeScope();
        return layer.forward(x, positions).MoveToOuterDisposeScope();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var layer = (DecoderLayer)ctx.get_data("layer");
        var positions = (Positions)ctx.get_data("positions");
        bool inputNeedsGrad = (bool)ctx.get_data("inputNeedsGrad");
        var weights = TrainableWeights(layer).ToList();
        IList<Tensor> grads;
        using (var scope = NewDisposeScope())
        {
            var x = ctx.get_saved_variables()[0].detach().requires_grad_(inputNeedsGrad);
            Tensor output;
            using (var now = random.get_rng_state())
            {
                using (var then = random.get_rng_state())
                {
                    then.bytes = (byte[])ctx.get_data("rng");
                    random.set_rng_state(then);
                }
                if (ctx.get_data("cudaSeed") is long cudaSeed) cuda.manual_seed_all(cudaSeed);
                using (enable_grad()) output = layer.forward(x, positions);
                Interlocked.Increment(ref Recomputations);
                random.set_rng_state(now);
            }
            grads = autograd.grad([output], inputNeedsGrad ? [x, .. weights] : weights, [gradOutput]);
            // The engine takes the gradients after this returns; until then they belong to the caller's scope.
            foreach (var g in grads) g.MoveToOuterDisposeScope();
        }
        return [null!, null!, null!, inputNeedsGrad ? grads[0] : null!, .. grads.Skip(inputNeedsGrad ? 1 : 0)];
    }
}
