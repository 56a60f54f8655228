using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

#pragma warning disable IDE1006 // HF state-dict names, see Layers.cs

/// <summary>
/// A mixture-of-experts MLP as config.json describes it (Mixtral, Qwen2-MoE, Qwen3-MoE). The names are the HF
/// state-dict names of the block and its expert projections, so weights load and LoRA targets them by PEFT's names.
/// </summary>
internal sealed record MoeConfig
{
    public required int NumExperts { get; init; }
    /// <summary>num_experts_per_tok: each token runs through this many experts.</summary>
    public required int TopK { get; init; }
    public required long ExpertIntermediateSize { get; init; }
    /// <summary>Renormalise the top-k router probabilities to sum to 1 (Mixtral always; Qwen's norm_topk_prob).</summary>
    public bool NormTopKProb { get; init; }
    /// <summary>Qwen2-MoE's always-on expert of this width, gated per token by sigmoid(shared_expert_gate(x)).</summary>
    public long? SharedExpertIntermediateSize { get; init; }
    public double RouterAuxLossCoef { get; init; } = 0.001;
    /// <summary>config.json's output_router_logits: the training loss gets router_aux_loss_coef × the load-balancing loss.</summary>
    public bool OutputRouterLogits { get; init; }
    /// <summary>Which layers are sparse (decoder_sparse_step, mlp_only_layers); the others have a dense MLP.</summary>
    public required IReadOnlyList<bool> SparseLayers { get; init; }
    /// <summary>The block's state-dict name: Mixtral's block_sparse_moe, Qwen's mlp.</summary>
    public string BlockName { get; init; } = "mlp";
    /// <summary>Each expert's projections: Mixtral's w1 (gate), w3 (up), w2 (down); Qwen's gate_proj, up_proj, down_proj.</summary>
    public ModuleNames ExpertNames { get; init; } = new();
}

/// <summary>
/// Where the sparse blocks of one forward pass put their router logits [tokens, experts] (HF's output_router_logits),
/// for the load-balancing loss. Off (null) unless the loss asks for them.
/// </summary>
internal sealed class RouterLogits
{
    public List<Tensor>? Collected { get; set; }
}

/// <summary>
/// transformers' sparse MoE block: router softmax (fp32) over all experts, the top k kept (renormalised if the config
/// says), each expert run only on the tokens routed to it and its output, times the routing weight, added back at
/// those tokens. Tokens are grouped per expert with one sort, so the work and memory scale with k, not the expert count.
/// </summary>
internal sealed class SparseMoeBlock : nn.Module<Tensor, Tensor>
{
    // Typed as modules, not Linear, so LoRA and quantization can swap in their own layers.
    public nn.Module<Tensor, Tensor> gate;
    public TorchSharp.Modules.ModuleList<Mlp> experts;
    public Mlp? shared_expert;
    public nn.Module<Tensor, Tensor>? shared_expert_gate;
    readonly MoeConfig _moe;
    readonly RouterLogits? _sink;

    public SparseMoeBlock(DecoderConfig c, ScalarType dtype, RouterLogits? sink) : base(c.Moe!.BlockName)
    {
        _moe = c.Moe;
        _sink = sink;
        gate = new Linear(c.HiddenSize, _moe.NumExperts, false, dtype);
        experts = new TorchSharp.Modules.ModuleList<Mlp>(Enumerable.Range(0, _moe.NumExperts)
            .Select(_ => new Mlp(c, dtype, _moe.ExpertIntermediateSize, _moe.ExpertNames)).ToArray());
        register_module("gate", gate);
        register_module("experts", experts);
        if (_moe.SharedExpertIntermediateSize is long shared)
        {
            shared_expert = new Mlp(c, dtype, shared);
            shared_expert_gate = new Linear(c.HiddenSize, 1, false, dtype);
            register_module("shared_expert", shared_expert);
            register_module("shared_expert_gate", shared_expert_gate);
        }
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    public override Tensor forward(Tensor x)
    {
        var shape = x.shape;
        var h = x.reshape(-1, shape[^1]);
        var routerLogits = gate.forward(h);
        _sink?.Collected?.Add(routerLogits);
        var probabilities = F.softmax(routerLogits, 1, ScalarType.Float32);
        var (weights, selected) = probabilities.topk(_moe.TopK, 1);
        if (_moe.NormTopKProb) weights = weights / weights.sum(1, keepdim: true);
        weights = weights.to(h.dtype);

        // Group the (token, slot) pairs by expert: one stable sort of the flattened choices, then each expert's pairs
        // are a contiguous slice.
        var flatExperts = selected.reshape(-1);
        var (_, order) = flatExperts.sort(0, false, true);
        var tokenOfPair = order.div(_moe.TopK, rounding_mode: RoundingMode.floor);
        var weightOfPair = weights.reshape(-1).index_select(0, order);
        var counts = flatExperts.bincount(null, _moe.NumExperts).cpu().data<long>().ToArray();
        var output = zeros_like(h);
        long start = 0;
        for (int e = 0; e < _moe.NumExperts; e++)
        {
            long n = counts[e];
            if (n == 0) continue;
            var tokens = tokenOfPair.narrow(0, start, n);
            // call, not forward, so forward hooks see each expert's batch of routed tokens.
            var routed = experts[e].call(h.index_select(0, tokens)) * weightOfPair.narrow(0, start, n).unsqueeze(1);
            output.index_add_(0, tokens, routed, 1);
            start += n;
        }
        if (shared_expert is not null)
            output = output + F.sigmoid(shared_expert_gate!.forward(h)) * shared_expert.forward(h);
        return output.view(shape);
    }
}

/// <summary>transformers' load_balancing_loss_func (Switch Transformer, eqs. 4–6) over all sparse layers' router logits.</summary>
internal static class LoadBalancing
{
    /// <summary>
    /// E · Σ_e f_e · P_e summed over the k slots, where f is the fraction of tokens whose slot-th choice is e and P the
    /// mean router probability of e, both over all layers' tokens; <paramref name="tokenMask"/> [tokens] (1 real, 0
    /// padding; null: all) weights the means as transformers' attention_mask does.
    /// </summary>
    public static Tensor Loss(IReadOnlyList<Tensor> routerLogits, int numExperts, int topK, Tensor? tokenMask)
    {
        var logits = cat(routerLogits.ToArray(), 0).to(ScalarType.Float32);
        var probabilities = F.softmax(logits, -1);
        var (_, selected) = probabilities.topk(topK, -1);
        var chosen = F.one_hot(selected, numExperts).to(ScalarType.Float32); // [layers·tokens, k, experts]
        Tensor tokensPerExpert, probabilityPerExpert;
        if (tokenMask is null)
        {
            tokensPerExpert = chosen.mean([0]);
            probabilityPerExpert = probabilities.mean([0]);
        }
        else
        {
            var mask = tokenMask.to(ScalarType.Float32).reshape(-1).repeat(routerLogits.Count); // layer-major, as cat
            tokensPerExpert = (chosen * mask.view(-1, 1, 1)).sum([0]) / mask.sum();
            probabilityPerExpert = (probabilities * mask.view(-1, 1)).sum([0]) / mask.sum();
        }
        return (tokensPerExpert * probabilityPerExpert.unsqueeze(0)).sum() * numExperts;
    }
}
