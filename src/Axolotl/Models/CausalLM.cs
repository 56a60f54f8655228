using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.IO;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Models;

#pragma warning disable IDE1006 // HF state-dict names, see Layers.cs

/// <summary>The transformer body: HF's "model" prefix.</summary>
internal sealed class DecoderModel : nn.Module<Tensor, Tensor>
{
    public Embedding embed_tokens;
    public ModuleList<DecoderLayer> layers;
    public nn.Module<Tensor, Tensor> norm;
    readonly DecoderConfig _config;

    /// <summary>Collects the sparse layers' router logits of a forward pass when the loss needs them.</summary>
    internal RouterLogits Router { get; } = new();

    public DecoderModel(DecoderConfig c, ScalarType dtype, ScalarType computeType) : base("model")
    {
        _config = c;
        embed_tokens = new Embedding(c.VocabSize, c.HiddenSize, dtype, computeType);
        layers = new ModuleList<DecoderLayer>(Enumerable.Range(0, c.NumLayers).Select(i => new DecoderLayer(c, dtype, i, Router)).ToArray());
        norm = Parts.Norm(c, dtype);
        register_module("embed_tokens", embed_tokens);
        register_module("layers", layers);
        register_module(c.Names.FinalNorm, norm);
    }

    protected override void RegisterComponents() { } // children are registered by HF name in the constructor

    /// <summary>Keep only each layer's input in training and recompute the layer in backward (gradient_checkpointing).</summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>ids [batch, seq] → final hidden states [batch, seq, hidden] in the compute dtype.</summary>
    public override Tensor forward(Tensor ids) => Forward(ids, null);

    /// <summary>
    /// As <see cref="forward(Tensor)"/>; with a cache, ids are the tokens after those already cached: their positions
    /// continue from the cache's length, they attend to the cached keys, and their keys are appended.
    /// </summary>
    public Tensor Forward(Tensor ids, KvCache? cache) => Forward(ids, cache, null, null);

    /// <summary>
    /// As <see cref="forward(Tensor)"/>, for rows that may hold several samples (sample packing). positionIds [batch, seq]:
    /// each token's position within its own sample, for RoPE (null: 0..seq-1). sequenceIds [batch, seq]: which sample each
    /// token belongs to; a token attends only to earlier tokens with the same id (null: derived from where positionIds
    /// restart at 0, as transformers does; both null: one sample per row). A negative id -s marks a masked-out token
    /// (attention_mask 0 inside a row): no query sees it as a key, and as a query it sees sample s.
    /// </summary>
    public Tensor forward(Tensor ids, Tensor? positionIds, Tensor? sequenceIds) => Forward(ids, null, positionIds, sequenceIds);

    Tensor Forward(Tensor ids, KvCache? cache, Tensor? positionIds, Tensor? sequenceIds)
    {
        var h = embed_tokens.forward(ids);
        // HF makes the normalizer a tensor of the hidden dtype, so sqrt(hidden) is rounded to bf16 in bf16 runs.
        if (_config.ScaleEmbeddings) h = h * tensor(Math.Sqrt(_config.HiddenSize), dtype: h.dtype, device: h.device);
        h = Parts.Dropout(h, _config.EmbeddingDropout, training);
        long past = cache?.Length ?? 0, seq = ids.shape[1];
        if (positionIds is null && sequenceIds is null)
        {
            // Length-dependent scalings (dynamic NTK, longrope) see the longest position so far, as transformers' do.
            var (invFreq, attentionFactor) = RopeScaling.Frequencies(_config, past + seq, h.device);
            var (cos, sin) = Rope.Angles(arange(past, past + seq, dtype: ScalarType.Int64, device: h.device), invFreq, attentionFactor, h.dtype);
            var positions = new Positions(cos, sin, past > 0 && seq > 1 ? Mask(past, seq, null, h.device) : null)
            {
                SlidingMask = _config.SlidingWindow is int window ? Mask(past, seq, window, h.device) : null,
                SlidingAngles = SlidingAngles(arange(past, past + seq, dtype: ScalarType.Int64, device: h.device), h),
                Cache = cache,
            };
            return RunLayers(h, positions);
        }
        if (cache != null) throw new ArgumentException("packed rows are for training; they take no cache");
        return RunLayers(h, PackedPositions(positionIds, sequenceIds, seq, h));
    }

    /// <summary>Gemma 3's sliding layers rotate with their own base and without the global layers' rope_scaling.</summary>
    (Tensor Cos, Tensor Sin)? SlidingAngles(Tensor positions, Tensor h)
    {
        if (_config.SlidingRopeTheta is not double theta) return null;
        var (invFreq, attentionFactor) = RopeScaling.Frequencies(_config with { RopeTheta = theta, RopeScaling = null }, 0, h.device);
        return Rope.Angles(positions, invFreq, attentionFactor, h.dtype);
    }

    Tensor RunLayers(Tensor h, Positions positions)
    {
        bool recompute = GradientCheckpointing && training && is_grad_enabled();
        if (recompute && Router.Collected is not null)
            throw new UserError("gradient_checkpointing with the router load-balancing loss (output_router_logits) is not supported yet; turn one of them off.");
        // TorchSharp cannot read a CUDA generator's state, so in GPU training each layer's dropout starts from a seed
        // drawn from the CPU generator (which checkpoints save): gradient checkpointing sets it again to recompute.
        bool reseed = training && Runtime.ComputeDevice.IsCuda(h.device);
        // In training each layer's intermediates are freed as it ends: autograd holds what backward needs by its own
        // reference, and the step's dispose scope would otherwise keep all of them (needed or not) until the step ends.
        // Not with a KV cache or router logits to collect: those keep tensors made inside the layer.
        bool scoped = training && is_grad_enabled() && positions.Cache is null && Router.Collected is null;
        foreach (var layer in layers)
        {
            long? cudaSeed = reseed ? Runtime.ComputeDevice.ReseedCuda() : null;
            if (recompute) h = GradientCheckpoint.Run(layer, h, positions, cudaSeed);
            else if (!scoped) h = layer.forward(h, positions);
            else
            {
                using var scope = NewDisposeScope();
                h = layer.forward(h, positions).MoveToOuterDisposeScope();
            }
        }
        return norm.forward(h);
    }

    /// <summary>
    /// Which keys [0, past + seq) each new query (positions past .. past + seq - 1) may see: earlier ones, and within a
    /// sliding window only the last few. Mistral's window as transformers 4.40 masks it (tril with diagonal -window-1,
    /// as flash-attn's window (w, w)) sees i - window .. i, window + 1 keys; Gemma 2's and Phi-3's see window keys.
    /// Null when plain causal attention is the same.
    /// </summary>
    Tensor? Mask(long past, long seq, int? window, Device device)
    {
        long total = past + seq;
        long visible = window is int w ? w + (_config.SlidingWindowInclusive ? 1 : 0) : total;
        if (visible >= total && (past == 0 || seq == 1)) return null;
        var i = arange(past, total, device: device).unsqueeze(1);
        var j = arange(total, device: device).unsqueeze(0);
        return j.le(i).logical_and(j.gt(i - visible));
    }

    /// <summary>
    /// Angles and masks for packed rows: cos/sin [batch, 1, seq, rotary_dim] from each token's own position; masks
    /// [batch, 1, seq, seq] block-diagonal (same sample only) on top of causal or the sliding window. Padding, its own
    /// sample, sees only padding, so no row of the mask is empty.
    /// </summary>
    Positions PackedPositions(Tensor? positionIds, Tensor? sequenceIds, long seq, Tensor h)
    {
        positionIds ??= arange(seq, dtype: ScalarType.Int64, device: h.device).expand(h.shape[0], seq);
        sequenceIds ??= positionIds.eq(0).cumsum(-1);
        // As transformers with position_ids: length-dependent scalings see the largest position + 1.
        var (invFreq, attentionFactor) = RopeScaling.Frequencies(_config, positionIds.max().item<long>() + 1, h.device);
        var (cos, sin) = Rope.Angles(positionIds.unsqueeze(1), invFreq, attentionFactor, h.dtype);
        var sameSample = sequenceIds.abs().unsqueeze(2).eq(sequenceIds.unsqueeze(1));
        Tensor Packed(int? window) =>
            sameSample.logical_and(Mask(0, seq, window, h.device) ?? ones(seq, seq, ScalarType.Bool, h.device).tril()).unsqueeze(1);
        return new Positions(cos, sin, Packed(null))
        {
            SlidingMask = _config.SlidingWindow is int w ? Packed(w) : null,
            SlidingAngles = SlidingAngles(positionIds.unsqueeze(1), h),
        };
    }
}

/// <summary>A decoder-only language model with a head, as HF's *ForCausalLM.</summary>
internal sealed class CausalLM : nn.Module<Tensor, Tensor>
{
    public DecoderModel model;
    public Linear? lm_head;
    /// <summary>The classifier head of a reward model (<see cref="DecoderConfig.Classifier"/>); null for a causal LM.</summary>
    public Linear? score;
    public DecoderConfig Config { get; }
    public ScalarType ComputeType { get; }

    /// <summary>
    /// Logits computed at once in the loss: [tokens × vocab] fp32 logits dominate memory and time, so the head runs over
    /// chunks of rows, each under 32 MiB in fp32 — glibc's largest mmap threshold (TorchRuntime), so the heap reuses
    /// the same pages — and as many rows as that allows, since the head's matmul gets faster with more of them.
    /// </summary>
    const long LossChunkElements = 8_000_000;

    internal long LossChunkRows => Math.Clamp(LossChunkElements / Config.VocabSize, 8, 1024);

    CausalLM(DecoderConfig config, ScalarType dtype, ScalarType computeType) : base("CausalLM")
    {
        Config = config;
        ComputeType = computeType;
        model = new DecoderModel(config, dtype, computeType);
        lm_head = config.TieWordEmbeddings || config.Classifier != null ? null : new Linear(config.HiddenSize, config.VocabSize, config.LmHeadBias, dtype);
        if (config.Classifier is { } head)
        {
            // transformers' _init_weights for a head the checkpoint lacks, from the run's seeded generator.
            score = new Linear(config.HiddenSize, head.NumLabels, head.Bias, dtype);
            using (no_grad()) score.weight.normal_(0, config.InitializerRange);
        }
        OutputRouterLogits = config.Moe?.OutputRouterLogits ?? false;
        RegisterComponents();
    }

    /// <summary>
    /// transformers' output_router_logits (config.json's, which Axolotl sets through model_config for MoE training):
    /// <see cref="LossSum"/> and <see cref="LossSumBackward"/> then add router_aux_loss_coef × the load-balancing loss.
    /// No effect on a dense model.
    /// </summary>
    public bool OutputRouterLogits { get; set; }

    bool RouterLossActive => OutputRouterLogits && Config.Moe is { } moe && moe.SparseLayers.Any(s => s);

    /// <summary>
    /// The load-balancing loss (transformers' aux_loss, before router_aux_loss_coef) of the last <see cref="LossSum"/> or
    /// <see cref="LossSumBackward"/> call; null when no router loss was computed.
    /// </summary>
    public double? LastRouterAuxLoss { get; private set; }

    internal Tensor Head(Tensor hidden)
    {
        if (score is not null) return score.forward(hidden);
        var logits = lm_head is null ? DecodeMatmul.LinearOrTorch(hidden, Cast.To(model.embed_tokens.weight, hidden.dtype), null) : lm_head.forward(hidden);
        // Gemma 2 bounds the logits smoothly: cap · tanh(logits / cap), in the compute dtype.
        return Config.FinalLogitSoftcap is double cap ? (logits / cap).tanh() * cap : logits;
    }

    /// <summary>ids [batch, seq] → logits [batch, seq, vocab] in fp32.</summary>
    public override Tensor forward(Tensor ids) => Head(model.forward(ids)).to(ScalarType.Float32);

    /// <summary>Logits of packed rows; see <see cref="DecoderModel.forward(Tensor, Tensor?, Tensor?)"/>.</summary>
    public Tensor forward(Tensor ids, Tensor? positionIds, Tensor? sequenceIds) =>
        Head(model.forward(ids, positionIds, sequenceIds)).to(ScalarType.Float32);

    /// <summary>Logits [batch, vocab] (fp32) of the last position, reading and extending <paramref name="cache"/>.</summary>
    public Tensor NextTokenLogits(Tensor ids, KvCache? cache)
    {
        var hidden = model.Forward(ids, cache);
        return Head(hidden.narrow(1, hidden.shape[1] - 1, 1).squeeze(1)).to(ScalarType.Float32);
    }

    public KvCache NewCache() => new(Config.NumLayers);

    /// <summary>Where the weights live (ModelLoading.Place); batches and everything made from them go there too.</summary>
    public Device Device => model.embed_tokens.weight.device;

    /// <summary>
    /// Summed cross-entropy of next-token predictions over labels != -100 (HF's shift: logits[:, :-1] vs labels[:, 1:]),
    /// and how many tokens it covers. Callers divide by the token count of the whole accumulation window.
    /// Packed rows pass positionIds/sequenceIds (see <see cref="DecoderModel.forward(Tensor, Tensor?, Tensor?)"/>); their
    /// labels must be -100 at each sample's first token, so no sample predicts the next one's start.
    /// </summary>
    /// <remarks>
    /// With <see cref="OutputRouterLogits"/> on an MoE model, the sum also holds router_aux_loss_coef × aux × tokens,
    /// where aux is this micro-batch's load-balancing loss over all its (non-padding) tokens and sparse layers. So
    /// sum / tokens is transformers' loss (mean cross-entropy + coef × aux) for one micro-batch, and over an
    /// accumulation window sum / window tokens is the mean cross-entropy + coef × the token-weighted mean of the
    /// micro-batches' aux: the aux term keeps its weight whatever gradient_accumulation_steps is (transformers' Trainer
    /// adds coef × aux to every micro-batch's loss, so there its weight grows with the number of micro-batches).
    /// <paramref name="attentionMask"/> [batch, seq] (1 real, 0 padding) keeps padding out of the aux loss as
    /// transformers' attention_mask does; packed rows take it from sequenceIds (&gt; 0); null otherwise: all tokens count.
    /// </remarks>
    public (Tensor Sum, long Tokens) LossSum(Tensor ids, Tensor labels, Tensor? positionIds = null, Tensor? sequenceIds = null, Tensor? attentionMask = null)
    {
        var (hidden, targets, aux) = Predicted(ids, labels, positionIds, sequenceIds, attentionMask);
        long tokens = targets.shape[0];
        var total = zeros(1, dtype: ScalarType.Float32, device: hidden.device).sum();
        for (long start = 0; start < tokens; start += LossChunkRows)
            total = total + ChunkLoss(hidden, targets, start);
        if (aux is not null) total = total + aux * (Config.Moe!.RouterAuxLossCoef * tokens);
        return (total, tokens);
    }

    /// <summary>
    /// <see cref="LossSum"/> and its backward pass (gradients of scale × sum), one head chunk at a time. The cross-entropy
    /// gradient, scale · (softmax − onehot), is formed in place from the chunk's fp32 log-probabilities and sent back
    /// through the head in the compute dtype: no autograd graph over [rows × vocab], no zero-filled one-hot gradient,
    /// and each chunk's buffers are freed before the next.
    /// </summary>
    /// <remarks>The router aux loss is added, and its gradient taken, as <see cref="LossSum"/> describes.</remarks>
    public (double Sum, long Tokens) LossSumBackward(Tensor ids, Tensor labels, double scale, Tensor? positionIds = null, Tensor? sequenceIds = null,
        Tensor? attentionMask = null)
    {
        var (hidden, targets, aux) = Predicted(ids, labels, positionIds, sequenceIds, attentionMask);
        long tokens = targets.shape[0];
        if (tokens == 0) return (0, 0);
        using var detached = hidden.detach().requires_grad_(true);
        double total = 0;
        for (long start = 0; start < tokens; start += LossChunkRows)
        {
            using var scope = NewDisposeScope();
            long n = Math.Min(LossChunkRows, tokens - start);
            var logits = Head(detached.narrow(0, start, n));
            Tensor gradient;
            using (no_grad())
            {
                var target = targets.narrow(0, start, n).unsqueeze(1);
                var logProbs = F.log_softmax(logits.to(ScalarType.Float32), -1);
                total -= logProbs.gather(1, target).sum().item<float>();
                var softmax = logProbs.exp_();
                softmax.scatter_add_(1, target, full([n, 1], -1f, ScalarType.Float32, softmax.device));
                gradient = softmax.mul_(scale).to(logits.dtype);
            }
            logits.backward([gradient]);
        }
        if (aux is null) hidden.backward([detached.grad!]);
        else
        {
            // One backward pass for both: the head's gradient into the hidden states, and the aux term's into the routers.
            double auxWeight = Config.Moe!.RouterAuxLossCoef * tokens;
            total += auxWeight * LastRouterAuxLoss!.Value;
            ((hidden * detached.grad!).sum() + aux * (auxWeight * scale)).backward();
        }
        return (total, tokens);
    }

    /// <summary>
    /// Final hidden states at positions whose next token is trained on, those next tokens, and the router
    /// load-balancing loss when <see cref="OutputRouterLogits"/> asks for it.
    /// </summary>
    (Tensor Hidden, Tensor Targets, Tensor? Aux) Predicted(Tensor ids, Tensor labels, Tensor? positionIds, Tensor? sequenceIds, Tensor? attentionMask)
    {
        LastRouterAuxLoss = null;
        bool routerLoss = RouterLossActive;
        model.Router.Collected = routerLoss ? [] : null;
        Tensor hidden;
        List<Tensor>? routerLogits;
        try { hidden = model.forward(ids, positionIds, sequenceIds); }
        finally { routerLogits = model.Router.Collected; model.Router.Collected = null; }
        Tensor? aux = null;
        if (routerLoss)
        {
            var moe = Config.Moe!;
            aux = LoadBalancing.Loss(routerLogits!, moe.NumExperts, moe.TopK, attentionMask ?? sequenceIds?.gt(0));
            LastRouterAuxLoss = aux.item<float>();
        }
        long seq = ids.shape[1];
        var h = hidden.narrow(1, 0, seq - 1).reshape(-1, hidden.shape[^1]);
        var y = labels.narrow(1, 1, seq - 1).reshape(-1);
        var keep = y.ne(-100).nonzero().squeeze(1);
        return (h.index_select(0, keep), y.index_select(0, keep), aux);
    }

    Tensor ChunkLoss(Tensor hidden, Tensor targets, long start)
    {
        long n = Math.Min(LossChunkRows, targets.shape[0] - start);
        var logits = Head(hidden.narrow(0, start, n)).to(ScalarType.Float32);
        return F.cross_entropy(logits, targets.narrow(0, start, n), reduction: nn.Reduction.Sum);
    }

    public static CausalLM Create(DecoderConfig config, ScalarType dtype, ScalarType computeType) => new(config, dtype, computeType);

    /// <summary>
    /// HF's _init_weights: normal(0, initializer_range) for linear and embedding weights, zero biases; norms keep
    /// their identity (weight 1, or 0 where the norm scales by 1 + w; LayerNorm bias 0).
    /// </summary>
    /// <param name="takeWeight">Offered each linear weight (module path, a function drawing its values into a new tensor)
    /// before it is drawn in place; returning true means the caller took it (the quantizing random init draws each weight
    /// on its own and quantizes it, so the full-precision model never exists). Draws come from the same generator in the
    /// same order either way, so the values are the same.</param>
    public void InitializeWeights(long seed, Func<string, Func<Tensor>, bool>? takeWeight = null)
    {
        using var _ = no_grad();
        var generator = new Generator((ulong)seed);
        var modules = named_modules().ToDictionary(m => m.name, m => m.module);
        foreach (var (name, p) in named_parameters().ToList())
        {
            bool isBias = name.EndsWith(".bias");
            var path = name[..name.LastIndexOf('.')];
            switch (modules[path])
            {
                case RmsNorm norm: p.fill_(1 - norm.Offset); break;
                case LayerNorm: p.fill_(isBias ? 0 : 1); break;
                case Linear when !isBias && takeWeight is not null
                                 && takeWeight(path, () => empty(p.shape, p.dtype).normal_(0, Config.InitializerRange, generator)):
                    break;
                default:
                    if (isBias) p.zero_();
                    else p.normal_(0, Config.InitializerRange, generator);
                    break;
            }
        }
    }

    public static CausalLM FromPretrained(string modelDir, ScalarType dtype, ScalarType computeType)
    {
        var config = DecoderConfig.FromFolder(modelDir);
        var lm = new CausalLM(config, dtype, computeType);
        lm.LoadWeights(modelDir);
        return lm;
    }

    /// <summary>
    /// Copies weights from model.safetensors (or the shards of model.safetensors.index.json) by HF key, reading each
    /// tensor from its memory-mapped file only when it is copied.
    /// </summary>
    /// <param name="growVocabSeed">When set, checkpoint embeddings (and an untied head) with fewer rows than the
    /// model's vocabulary are grown as transformers' resize_token_embeddings(mean_resizing=False) does, which is how
    /// Axolotl calls it: the new rows from _init_weights, normal(0, initializer_range), seeded; a head bias with zeros.</param>
    /// <param name="loadedElsewhere">Checkpoint keys the caller has already taken (the quantizing load's linear weights).</param>
    public void LoadWeights(string modelDir, long? growVocabSeed = null, IReadOnlySet<string>? loadedElsewhere = null)
    {
        if (Export.GgufModel.IsGguf(modelDir)) { Export.GgufModel.LoadInto(this, modelDir); return; }
        var layout = ShardedSafetensors.LayoutOf(modelDir);
        var files = ShardedSafetensors.WeightFiles(modelDir).Select(SafetensorsFile.Open).ToList();
        var byKey = new Dictionary<string, SafetensorsFile>();
        foreach (var f in files)
            foreach (var key in f.Entries.Keys) byKey[key] = f;
        if (layout is not null)
            foreach (var (key, file) in layout)
                if (!byKey.TryGetValue(key, out var holder) || Path.GetFileName(holder.Path) != file)
                    throw new UserError($"{Path.Combine(modelDir, ShardedSafetensors.IndexFile)}: tensor '{key}' is mapped to '{file}', which does not hold it.");
        var expected = named_parameters().ToDictionary(p => p.name, p => p.parameter);
        // A causal LM's checkpoint loaded as a classifier: its lm_head is left out and the new score head keeps its init.
        bool NewHead(string key) => Config.Classifier != null && key.StartsWith(ClassifierHead.Module + ".", StringComparison.Ordinal) && !byKey.ContainsKey(key);
        var missing = expected.Keys.Where(k => !byKey.ContainsKey(k) && !NewHead(k)).ToList();
        if (missing.Count > 0)
            throw new UserError($"{modelDir}: the weights lack {missing.Count} tensor(s) that config.json implies, e.g. {string.Join(", ", missing.Take(3))}.");
        // Older checkpoints carry rotary inv_freq buffers; they are recomputed, not loaded.
        var unexpected = byKey.Keys.Where(k => !expected.ContainsKey(k) && !k.EndsWith("rotary_emb.inv_freq") && loadedElsewhere?.Contains(k) != true
                                               && !(Config.TieWordEmbeddings && k == "lm_head.weight")
                                               && !(Config.Classifier != null && k.StartsWith("lm_head.", StringComparison.Ordinal))).ToList();
        if (unexpected.Count > 0)
            throw new UserError($"{modelDir}: the weights hold {unexpected.Count} tensor(s) this architecture does not use, e.g. {string.Join(", ", unexpected.Take(3))}.");
        using var _ = no_grad();
        foreach (var (name, parameter) in expected)
        {
            if (NewHead(name)) continue;
            var file = byKey[name];
            var entry = file.Entries[name];
            if (growVocabSeed is long seed && name is "model.embed_tokens.weight" or "lm_head.weight" or "lm_head.bias"
                && entry.Shape.Length == parameter.shape.Length && entry.Shape[0] < parameter.shape[0] && entry.Shape.Skip(1).SequenceEqual(parameter.shape.Skip(1)))
            {
                if (name == "lm_head.bias") parameter.zero_();
                else
                {
                    using var generator = new Generator((ulong)seed + (name == "lm_head.weight" ? 1UL : 0UL));
                    parameter.normal_(0, Config.InitializerRange, generator);
                }
                using var rows = file.Read(name);
                using var kept = parameter.narrow(0, 0, entry.Shape[0]);
                kept.copy_(rows);
                continue;
            }
            if (!entry.Shape.SequenceEqual(parameter.shape))
                throw new UserError($"{file.Path}: tensor '{name}' has shape [{string.Join(", ", entry.Shape)}] but config.json implies [{string.Join(", ", parameter.shape)}].");
            if (entry.DType is not ("F32" or "BF16" or "F16" or "F64"))
                throw new UserError($"{file.Path}: tensor '{name}' is stored as {entry.DType}; model weights must be F32, BF16 or F16.");
            if (SafetensorsFile.ToScalarType(entry.DType) == parameter.dtype && parameter.is_contiguous()) file.ReadInto(name, parameter);
            else
            {
                using var loaded = file.Read(name);
                parameter.copy_(loaded);
            }
        }
    }

    /// <summary>The dtype a checkpoint stores its weights in (that of model.embed_tokens.weight).</summary>
    public static ScalarType StoredWeightType(string modelDir)
    {
        foreach (var file in ShardedSafetensors.WeightFiles(modelDir).Select(SafetensorsFile.Open))
            if (file.Entries.TryGetValue("model.embed_tokens.weight", out var entry)) return SafetensorsFile.ToScalarType(entry.DType);
        throw new UserError($"{modelDir}: the weights have no model.embed_tokens.weight.");
    }

    /// <summary>Base-model weights under HF keys, whatever adapters wrap the layers.</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> BaseStateDict() =>
        named_parameters()
            .Where(p => !p.name.Contains(".lora_"))
            .Select(p => new KeyValuePair<string, Tensor>(p.name.Replace(".base_layer.", "."), p.parameter));

    /// <summary>
    /// Writes the weights (model.safetensors, or shards + index past <paramref name="maxShardBytes"/>, or along a base
    /// model's <paramref name="layout"/>), config.json and generation_config.json as transformers reads them.
    /// </summary>
    public void SavePretrained(string dir, ScalarType? saveType = null, IReadOnlyDictionary<string, string>? layout = null,
        long maxShardBytes = ShardedSafetensors.DefaultMaxShardBytes)
    {
        Directory.CreateDirectory(dir);
        var type = saveType ?? model.embed_tokens.weight.dtype;
        ShardedSafetensors.Save(dir, BaseStateDict().ToList(), new Dictionary<string, string> { ["format"] = "pt" }, type, maxShardBytes, layout);
        var config = (JsonObject)Config.Raw.DeepClone();
        config["torch_dtype"] = type == ScalarType.BFloat16 ? "bfloat16" : type == ScalarType.Float16 ? "float16" : "float32";
        var options = new JsonSerializerOptions { WriteIndented = true };
        AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(options));
        // transformers writes a generation config only for models that generate, which a classifier does not.
        if (Config.Classifier != null) return;
        var generation = new JsonObject { ["_from_model_config"] = true };
        // As config.json has them: Llama 3's eos_token_id is a list, and generation stops at any of its ids.
        foreach (var key in new[] { "bos_token_id", "eos_token_id" })
            if (Config.Raw[key] is { } id) generation[key] = id.DeepClone();
        AtomicFile.WriteAllText(Path.Combine(dir, "generation_config.json"), generation.ToJsonString(options));
    }
}
