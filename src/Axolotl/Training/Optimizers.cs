using Axolotl.Distributed;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Training;

/// <summary>
/// The update rule behind <c>optimizer:</c>, as transformers' Trainer builds it: parameter groups with and without
/// weight decay (biases and norm weights get none), the learning rate set before each step, and state that a
/// checkpoint saves and a resume restores exactly.
/// </summary>
internal abstract partial class TrainingOptimizer : IDisposable
{
    /// <summary>The optimizer names <see cref="Create"/> accepts (Axolotl's, which are transformers' OptimizerNames).</summary>
    public static readonly IReadOnlySet<string> Names = new HashSet<string> { "adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "lion_32bit", "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "muon" };

    /// <remarks>With <see cref="TrainingOptions.Collectives"/> a <see cref="DataParallel"/> run, gradients are summed over the
    /// ranks before the update, and with ZeRO stage 1 or 2 each rank keeps the optimizer state (and with 2 the gradients)
    /// of its share of the parameters only.</remarks>
    public static TrainingOptimizer Create(string name, IReadOnlyList<(string Name, Parameter Parameter)> trainable, TrainingOptions o)
    {
        var parallel = o.Collectives as DataParallel;
        static bool NoDecay(string name) => name.EndsWith(".bias") || name.Contains("norm.weight");
        // LoRA+ (PEFT's create_loraplus_optimizer as Axolotl calls it): lora_B and 1-D parameters at lr × ratio, the rest
        // at lr. Axolotl hands it no weight decay (HF keeps that in the param groups it replaces), so none applies.
        static bool IsLoraPlusB((string Name, Parameter Parameter) p) => p.Name.Contains("lora_B") || p.Parameter.dim() == 1;
        if (o.LoraPlusLrRatio is not null && name is not ("adamw_torch" or "adamw_torch_fused" or "sgd") && !EightBitAdamW.Contains(name))
            throw new UserError($"loraplus_lr_ratio is implemented with the adamw_torch and sgd optimizers, not '{name}'.");
        (double WeightDecay, double LrScale) Group((string Name, Parameter Parameter) p) => o.LoraPlusLrRatio is double ratio
            ? (0.0, IsLoraPlusB(p) ? ratio : 1.0)
            : (NoDecay(p.Name) || name == "muon" && IsEmbedding(p.Name) ? 0.0 : o.WeightDecay, 1.0);
        // Muon's factory puts the embeddings and the head in an AdamW group without weight decay.
        static bool IsEmbedding(string name) => name.Contains("embed_tokens") || name.Contains("lm_head");
        if (parallel is { ZeroStage: > 0 } && name == "muon")
            throw new UserError("deepspeed: Muon orthogonalises whole matrices, which ZeRO shards; Axolotl does not run Muon with DeepSpeed either. Drop the deepspeed key or use another optimizer.");
        if (parallel is { ZeroStage: > 0 } && name == "adafactor")
            throw new UserError("deepspeed: ZeRO stage 1 and 2 shard elementwise optimizers (adamw_torch, sgd, lion_32bit); adafactor's row and column statistics span whole matrices. Use another optimizer or drop the deepspeed key.");
        if (parallel is { ZeroStage: > 0 } && !o.Fp32Masters && trainable.Any(p => p.Parameter.dtype != ScalarType.Float32))
            throw new UserError("bfloat16: true (bf16 weights without fp32 master copies) is not implemented with deepspeed ZeRO, whose shards hold fp32 masters; use bf16: true, or drop the deepspeed key.");
        var shard = parallel is { ZeroStage: > 0 } ? new Shard(parallel, trainable.Select(p => p.Parameter).ToList()) : null;
        // With ZeRO a slot is the piece of a parameter this rank owns; otherwise the whole parameter.
        var slots = shard != null
            ? shard.Pieces.Select(piece => { var (wd, lrs) = Group(trainable[piece.Index]); return new Slot(trainable[piece.Index].Parameter, wd, lrs, piece.Start, piece.Length, piece.FlatStart); }).ToList()
            : trainable.Select(p => { var (wd, lrs) = Group(p); return new Slot(p.Parameter, wd, lrs, o.Fp32Masters); }).ToList();
        Manual optimizer = name switch
        {
            "adamw_torch" or "adamw_torch_fused" => new AdamW(slots, o.Beta1, o.Beta2, o.Epsilon),
            // transformers passes SGD nothing but lr (and the groups' weight decay): no momentum.
            "sgd" => new Sgd(slots),
            "adafactor" => new Adafactor(slots),
            "lion_32bit" => new Lion(slots, o.Beta1, o.Beta2),
            // The factory: matrices but the embeddings and head to Muon, the rest to AdamW.
            "muon" => new Muon(slots, trainable.Select(p => p.Parameter.dim() >= 2 && !IsEmbedding(p.Name)).ToArray(), o.Beta1, o.Beta2, o.Epsilon),
            _ when EightBitAdamW.Contains(name) => new AdamW8Bit(slots, o.Beta1, o.Beta2, o.Epsilon),
            _ => throw new ArgumentOutOfRangeException(nameof(name), name, "unknown optimizer"),
        };
        optimizer.Parallel = parallel;
        optimizer.Sharded = shard;
        return optimizer;
    }

    /// <summary>
    /// Makes the gradients those of the whole global batch: summed over ranks (each rank's loss was already scaled by
    /// the global window's units). Call once per optimizer step, after the window's last backward and before
    /// <see cref="GradNorm"/> and <see cref="Step"/>. A no-op for a single process.
    /// </summary>
    public virtual void SynchronizeGradients() { }

    /// <summary>
    /// Several ranks: collects each rank's own state (its generator, and with ZeRO its share of the optimizer state) on
    /// rank 0, whose <see cref="Save"/> writes them all into the checkpoint. Every rank calls it before a save.
    /// </summary>
    public virtual void GatherRankState() { }

    /// <summary>After <see cref="Load"/> of a multi-rank checkpoint: this rank's generator state, to restore after the
    /// checkpoint's (rank 0's) one.</summary>
    public byte[]? RestoredRngState { get; protected set; }

    /// <summary>Seconds spent in collectives (gradient sums, ZeRO's reduce-scatter and all-gather) so far.</summary>
    public double CommunicationSeconds => Communication.Elapsed.TotalSeconds;
    protected readonly System.Diagnostics.Stopwatch Communication = new();

    /// <summary>
    /// One update of every parameter from its gradient times <paramref name="gradScale"/> (the clipping coefficient)
    /// with learning rate <paramref name="lr"/>.
    /// </summary>
    public abstract void Step(double lr, double gradScale = 1.0);
    public abstract void ZeroGrad();
    /// <summary>
    /// The gradient the next <see cref="Step"/> applies to <paramref name="parameter"/> (the fp32 sum of an accumulation
    /// window, or the parameter's own), for a callback that edits it after the window's backward; null when it has none.
    /// </summary>
    public virtual Tensor? GradientOf(Parameter parameter) => parameter.grad;
    /// <summary>The L2 norm of all gradients together, accumulated in fp32 (torch's clip_grad_norm_ total norm).</summary>
    public abstract double GradNorm();
    /// <summary>
    /// Call after each micro-batch's backward when several are accumulated: low-precision gradients are added into fp32
    /// sums, so accumulation does not round in bf16.
    /// </summary>
    public abstract void CollectGradients();
    public abstract void Save(BinaryWriter writer);
    public abstract void Load(BinaryReader reader);
    /// <summary>Bytes of optimizer state held (moments, quantisation scales; not the fp32 master copies).</summary>
    public abstract long StateBytes { get; }
    /// <summary>The state tensors of the <paramref name="slot"/>-th trained parameter, in their saved order (tests, ReLoRA's pruning).</summary>
    internal abstract IReadOnlyList<Tensor> StateTensors(int slot);
    /// <summary>Applies <paramref name="transform"/> in place to each fp32 moment of the <paramref name="slot"/>-th trained
    /// parameter (8-bit moments are dequantized for it and re-quantized after): ReLoRA's pruning.</summary>
    internal abstract void TransformMoments(int slot, Action<Tensor> transform);
    public virtual void Dispose() { }

    /// <summary>
    /// A trained parameter, its group settings, and the fp32 master copy the update is applied to. A parameter held in
    /// bf16 (a full fine-tune in bf16) gets a separate fp32 master, updated and then rounded into the parameter: the
    /// forward pass reads bf16 weights with no per-step cast, and small updates are not lost to bf16 rounding.
    /// </summary>
    sealed class Slot
    {
        public readonly Parameter Parameter;
        public readonly double WeightDecay, LrScale;
        /// <summary>The elements of the flattened parameter this slot updates: all of it, or with ZeRO this rank's piece
        /// (then <see cref="Master"/> and the state are 1-D over the piece).</summary>
        public readonly long Start, Length;
        /// <summary>Where the piece starts in the flat space of all trained parameters (ZeRO), else -1.</summary>
        public readonly long FlatStart = -1;
        public readonly Tensor Master;
        public readonly bool HasSeparateMaster;
        /// <summary>fp32 sum of collected low-precision gradients (<see cref="CollectGradients"/>), else null.</summary>
        public Tensor? GradSum;
        /// <summary>Updates this parameter has had: torch keeps a step per parameter, so one frozen for a while (LISA)
        /// resumes its bias correction where it stopped rather than at the optimizer's step count.</summary>
        public long Steps;

        public Slot(Parameter parameter, double weightDecay, double lrScale, bool fp32Master = true)
        {
            (Parameter, WeightDecay, LrScale, Start, Length) = (parameter, weightDecay, lrScale, 0, parameter.numel());
            HasSeparateMaster = fp32Master && parameter.dtype != ScalarType.Float32;
            Master = HasSeparateMaster ? parameter.detach().to(ScalarType.Float32).DetachFromDisposeScope() : parameter;
        }

        public Slot(Parameter parameter, double weightDecay, double lrScale, long start, long length, long flatStart)
        {
            (Parameter, WeightDecay, LrScale, Start, Length, FlatStart) = (parameter, weightDecay, lrScale, start, length, flatStart);
            HasSeparateMaster = parameter.dtype != ScalarType.Float32;
            using var piece = parameter.detach().view(-1).narrow(0, start, length);
            // An fp32 parameter's piece is a view: the update lands in the parameter itself.
            Master = (HasSeparateMaster ? piece.to(ScalarType.Float32) : piece.alias()).DetachFromDisposeScope();
        }

        public bool IsPiece => FlatStart >= 0;
    }

    /// <summary>
    /// Update rules written on tensors, applied chunk by chunk: each rule is a handful of elementwise passes, and over
    /// chunks that stay in cache they cost about one read and write of the state instead of one per pass (what torch's
    /// fused CPU optimizers do in one kernel; TorchSharp has none). State tensors are created up front and saved in order.
    /// </summary>
    abstract class Manual : TrainingOptimizer
    {
        // 2 MiB per fp32 tensor: a chunk's few tensors stay in the last-level cache, and 4x fewer calls than 128K (measured).
        const long ChunkElements = 1 << 19;
        protected readonly List<Slot> Slots;
        protected long StepCount;
        /// <summary>Set for a multi-rank run (gradients are summed over ranks).</summary>
        internal DataParallel? Parallel;
        /// <summary>Set with ZeRO: which elements this rank updates, and its share of the summed gradients.</summary>
        internal Shard? Sharded;

        protected Manual(List<Slot> slots) => Slots = slots;

        /// <summary>State lives as long as the optimizer, whatever dispose scope it is created in; Dispose frees it.</summary>
        protected static Tensor Persistent(Tensor t) => t.DetachFromDisposeScope();

        /// <summary>Per-slot state tensors (fp32, the parameter's shape unless the rule says otherwise).</summary>
        protected abstract IEnumerable<Tensor> StateOf(int slot);

        /// <summary>Whether <see cref="Update"/> can run on any contiguous chunk of the flattened tensors.</summary>
        protected virtual bool Elementwise => true;

        /// <summary>
        /// Updates master <paramref name="p"/> from fp32 gradient <paramref name="g"/> (already scaled), with state chunks
        /// <paramref name="state"/> (views of <see cref="StateOf"/> at the same offsets).
        /// </summary>
        protected abstract void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr);

        public override void SynchronizeGradients()
        {
            if (Parallel is not { } parallel) return;
            using var _ = no_grad();
            Communication.Start();
            try
            {
                if (Sharded != null) { Sharded.ReduceScatter(); return; }
                // Plain data parallel: every rank sums the full gradients in fp32 and takes the same step.
                foreach (var slot in Slots)
                {
                    if (slot.HasSeparateMaster) Collect(slot);
                    if ((slot.GradSum ?? slot.Parameter.grad) is { } g) parallel.World.AllReduceSum(g);
                }
            }
            finally { Communication.Stop(); }
        }

        public override void Step(double lr, double gradScale = 1.0)
        {
            using var _ = no_grad();
            StepCount++;
            for (int i = 0; i < Slots.Count; i++)
            {
                var slot = Slots[i];
                if (Gradient(slot) is not { } grad) continue;
                slot.Steps++;
                var state = StateOf(i).ToArray();
                double slotLr = lr * slot.LrScale;
                if (!Elementwise)
                {
                    using var scope = NewDisposeScope();
                    Update(slot, slot.Master, Fp32Scaled(grad, gradScale), state, slotLr);
                    if (slot.HasSeparateMaster) slot.Parameter.copy_(slot.Master);
                    continue;
                }
                using var flatP = slot.Master.view(-1);
                using var flatG = grad.reshape(-1);
                using var flatParam = slot.Parameter.view(-1).narrow(0, slot.Start, slot.Length);
                var flatState = state.Select(t => t.view(-1)).ToArray();
                long n = flatP.shape[0];
                for (long start = 0; start < n; start += ChunkElements)
                {
                    using var scope = NewDisposeScope();
                    long len = Math.Min(ChunkElements, n - start);
                    var p = flatP.narrow(0, start, len);
                    Update(slot, p, Fp32Scaled(flatG.narrow(0, start, len), gradScale), flatState.Select(t => t.narrow(0, start, len)).ToArray(), slotLr);
                    if (slot.HasSeparateMaster) flatParam.narrow(0, start, len).copy_(p);
                }
                foreach (var t in flatState) t.Dispose();
            }
            // ZeRO: each rank updated its own piece; everyone gets everyone's.
            if (Sharded != null)
            {
                Communication.Start();
                Sharded.GatherParameters();
                Communication.Stop();
            }
        }

        /// <summary>The gradient in fp32 times <paramref name="scale"/>, leaving the gradient itself as it is.</summary>
        static Tensor Fp32Scaled(Tensor g, double scale)
        {
            if (g.dtype == ScalarType.Float32) return scale == 1.0 ? g.alias() : g.mul(scale);
            var g32 = g.to(ScalarType.Float32);
            return scale == 1.0 ? g32 : g32.mul_(scale);
        }

        /// <summary>
        /// The gradient to apply: with ZeRO this rank's piece of the summed gradients; else collected fp32 sums (with
        /// anything not yet collected), else the parameter's own.
        /// </summary>
        Tensor? Gradient(Slot slot)
        {
            // A parameter frozen since the optimizer was built (LISA) is skipped, as torch skips one whose grad is None.
            if (!slot.IsPiece && !slot.Parameter.requires_grad) return null;
            if (slot.IsPiece) return Sharded!.GradientOf(slot.FlatStart);
            if (slot.GradSum is null) return slot.Parameter.grad;
            if (slot.Parameter.grad is { } pending) { slot.GradSum.add_(pending); pending.zero_(); }
            return slot.GradSum;
        }

        public override double GradNorm()
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            double squares = 0;
            foreach (var slot in Slots)
            {
                if (Gradient(slot) is not { } g) continue;
                if (g.dtype == ScalarType.Float32) { double n = g.norm().item<float>(); squares += n * n; continue; }
                // Pieces big enough to cost few calls, small enough that their fp32 copies stay in the heap.
                const long NormChunk = 8 * ChunkElements;
                using var flat = g.reshape(-1);
                for (long start = 0; start < flat.shape[0]; start += NormChunk)
                {
                    using var chunk = flat.narrow(0, start, Math.Min(NormChunk, flat.shape[0] - start));
                    using var chunk32 = chunk.to(ScalarType.Float32);
                    double n = chunk32.norm().item<float>();
                    squares += n * n;
                }
            }
            // ZeRO: each rank holds its share of the gradient; the norm is over all of it.
            if (Sharded != null) squares = Parallel!.World.AllReduceSum(squares);
            return Math.Sqrt(squares);
        }

        public override Tensor? GradientOf(Parameter parameter)
        {
            var slot = Slots.FirstOrDefault(s => !s.IsPiece && ReferenceEquals(s.Parameter, parameter));
            return slot is null ? null : Gradient(slot);
        }

        public override void CollectGradients()
        {
            using var _ = no_grad();
            // ZeRO stage 2: each micro-batch's gradients are summed over ranks at once and only this rank's share is
            // kept, so no rank holds a full fp32 gradient.
            if (Sharded is { Stage: 2 })
            {
                Communication.Start();
                Sharded.ReduceScatter();
                Communication.Stop();
                return;
            }
            if (Sharded != null)
            {
                Sharded.CollectLocal();
                return;
            }
            foreach (var slot in Slots) if (slot.HasSeparateMaster) Collect(slot);
        }

        static void Collect(Slot slot)
        {
            if (slot.Parameter.grad is not { } g) return;
            // Created inside a micro-batch's dispose scope, but lives for the whole run.
            slot.GradSum ??= Persistent(zeros_like(slot.Master));
            slot.GradSum.add_(g);
            g.zero_();
        }

        public override void ZeroGrad()
        {
            foreach (var slot in Slots)
            {
                slot.Parameter.grad?.zero_();
                slot.GradSum?.zero_();
            }
            Sharded?.ZeroGrad();
        }

        internal override IReadOnlyList<Tensor> StateTensors(int slot) => StateOf(slot).ToList();

        internal override void TransformMoments(int slot, Action<Tensor> transform)
        {
            using var _ = no_grad();
            foreach (var t in StateOf(slot)) transform(t);
        }

        public override long StateBytes => Slots.Select((_, i) => StateOf(i).Sum(t => t.numel() * t.ElementSize)).Sum();

        IEnumerable<Tensor> SavedTensors() => Slots.SelectMany((slot, i) => (slot.HasSeparateMaster ? [slot.Master] : Array.Empty<Tensor>()).Concat(StateOf(i)));

        /// <summary>Marks a checkpoint written by several ranks: their per-rank sections come first.</summary>
        const long RanksMagic = 0x534B4E41525F4C41; // "AL_RANKS"
        byte[][]? _gatheredRanks;

        public override void GatherRankState()
        {
            if (Parallel is not { } parallel) return;
            using var bytes = new MemoryStream();
            using (var w = new BinaryWriter(bytes, System.Text.Encoding.UTF8, leaveOpen: true))
            {
                using var rng = random.get_rng_state();
                var generator = rng.bytes.ToArray();
                w.Write(generator.Length);
                w.Write(generator);
                // ZeRO: this rank's share of the state (its masters and moments); without it, the state every rank holds
                // alike is written once, after the sections.
                if (Sharded != null) { w.Write(StepCount); foreach (var t in SavedTensors()) t.Save(w); }
            }
            _gatheredRanks = parallel.World.GatherToRoot(bytes.ToArray());
        }

        public override void Save(BinaryWriter writer)
        {
            if (Parallel != null)
            {
                var sections = _gatheredRanks ?? throw new InvalidOperationException("a multi-rank checkpoint needs GatherRankState on every rank first");
                writer.Write(RanksMagic);
                writer.Write(sections.Length);
                writer.Write(Sharded != null);
                foreach (var section in sections) { writer.Write(section.Length); writer.Write(section); }
                _gatheredRanks = null;
                if (Sharded != null) return;
            }
            writer.Write(StepCount);
            foreach (var t in SavedTensors()) t.Save(writer);
            WriteSlotSteps(writer);
        }

        /// <summary>Appended after the state (older checkpoints end before it): each slot's own step count.</summary>
        const long SlotStepsMagic = 0x5350455453544C53; // "SLTSTEPS"

        void WriteSlotSteps(BinaryWriter writer)
        {
            writer.Write(SlotStepsMagic);
            writer.Write(Slots.Count);
            foreach (var slot in Slots) writer.Write(slot.Steps);
        }

        void ReadSlotSteps(BinaryReader reader)
        {
            foreach (var slot in Slots) slot.Steps = StepCount;
            var stream = reader.BaseStream;
            if (!stream.CanSeek || stream.Length - stream.Position < 12) return;
            if (reader.ReadInt64() != SlotStepsMagic || reader.ReadInt32() != Slots.Count)
                throw new UserError("resume: the checkpoint's optimizer state does not fit this run's trainable parameters.");
            foreach (var slot in Slots) slot.Steps = reader.ReadInt64();
        }

        public override void Load(BinaryReader reader)
        {
            long first = reader.ReadInt64();
            int ranks = Parallel?.World.WorldSize ?? 1;
            bool sharded = false;
            if (first == RanksMagic)
            {
                int savedRanks = reader.ReadInt32();
                sharded = reader.ReadBoolean();
                var sections = new byte[savedRanks][];
                for (int k = 0; k < savedRanks; k++) sections[k] = reader.ReadBytes(reader.ReadInt32());
                if (sharded && (Sharded == null || savedRanks != ranks))
                    throw new UserError($"resume: the checkpoint's optimizer state is ZeRO-sharded over {savedRanks} processes and this run {(Sharded == null ? "does not shard it" : $"has {ranks}")}; " +
                                        $"resume with {savedRanks} processes and the same deepspeed config (re-sharding is not implemented).");
                // This rank's own generator (its dropout masks continue as if never stopped) and, with ZeRO, its shard.
                if (Parallel != null && savedRanks == ranks)
                {
                    using var r = new BinaryReader(new MemoryStream(sections[Parallel.World.Rank]));
                    RestoredRngState = r.ReadBytes(r.ReadInt32());
                    if (sharded) { LoadState(r, r.ReadInt64()); return; }
                }
                first = reader.ReadInt64();
            }
            else if (Sharded != null)
                throw new UserError("resume: the checkpoint's optimizer state is not sharded (saved without deepspeed ZeRO or by one process); resume with the setting it was trained with.");
            LoadState(reader, first);
        }

        void LoadState(BinaryReader reader, long stepCount)
        {
            StepCount = stepCount;
            using var _ = no_grad();
            try { foreach (var t in SavedTensors()) t.Load(reader); }
            catch (ArgumentException e) when (e.Message.Contains("Mismatched", StringComparison.Ordinal))
            {
                throw new UserError("resume: the checkpoint's optimizer state does not fit this run: it holds other tensors or dtypes " +
                    "(fp32 master copies with bf16: true, bf16 state with bfloat16: true, or other trainable parameters); resume with the settings it was trained with.");
            }
            ReadSlotSteps(reader);
            foreach (var slot in Slots.Where(s => s.HasSeparateMaster))
            {
                using var target = slot.Parameter.view(-1).narrow(0, slot.Start, slot.Length);
                target.copy_(slot.Master.view(-1));
            }
        }

        public override void Dispose()
        {
            foreach (var (slot, i) in Slots.Select((s, i) => (s, i)))
            {
                foreach (var t in StateOf(i)) t.Dispose();
                if (slot.HasSeparateMaster || slot.IsPiece) slot.Master.Dispose();
                slot.GradSum?.Dispose();
            }
            Sharded?.Dispose();
        }
    }

    /// <summary>
    /// torch's AdamW (single-tensor path): p ← p·(1 − lr·wd); m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
    /// p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε).
    /// </summary>
    sealed class AdamW : Manual
    {
        readonly double _beta1, _beta2, _eps;
        readonly List<(Tensor M, Tensor V)> _moments;

        public AdamW(List<Slot> slots, double beta1, double beta2, double eps) : base(slots)
        {
            (_beta1, _beta2, _eps) = (beta1, beta2, eps);
            _moments = Slots.Select(s => (Persistent(zeros_like(s.Master)), Persistent(zeros_like(s.Master)))).ToList();
        }

        protected override IEnumerable<Tensor> StateOf(int slot) => [_moments[slot].M, _moments[slot].V];

        protected override void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr)
        {
            var (m, v) = (state[0], state[1]);
            if (slot.WeightDecay != 0) p.mul_(1 - lr * slot.WeightDecay);
            m.mul_(_beta1).add_(g, alpha: 1 - _beta1); // not lerp_: TorchSharp makes its weight a tensor on the default device
            v.mul_(_beta2).addcmul_(g, g, 1 - _beta2);
            double stepSize = lr / (1 - Math.Pow(_beta1, slot.Steps));
            double correction2Sqrt = Math.Sqrt(1 - Math.Pow(_beta2, slot.Steps));
            var denominator = v.sqrt().div_(correction2Sqrt).add_(_eps);
            p.addcdiv_(m, denominator, -stepSize);
        }
    }

    /// <summary>torch's SGD as transformers builds it: no momentum; weight decay added to the gradient (L2).</summary>
    sealed class Sgd(List<Slot> slots) : Manual(slots)
    {
        protected override IEnumerable<Tensor> StateOf(int slot) => [];

        protected override void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr)
        {
            p.add_(slot.WeightDecay != 0 ? g.add(p, alpha: slot.WeightDecay) : g, alpha: -lr);
        }
    }

    /// <summary>
    /// bitsandbytes' 32-bit Lion (what transformers builds for lion_32bit, betas from adam_beta1/adam_beta2):
    /// p ← p·(1 − lr·wd) − lr·sign(β1·m + (1 − β1)·g), then m ← β2·m + (1 − β2)·g.
    /// </summary>
    sealed class Lion : Manual
    {
        readonly double _beta1, _beta2;
        readonly List<Tensor> _momentum;

        public Lion(List<Slot> slots, double beta1, double beta2) : base(slots)
        {
            (_beta1, _beta2) = (beta1, beta2);
            _momentum = Slots.Select(s => Persistent(zeros_like(s.Master))).ToList();
        }

        protected override IEnumerable<Tensor> StateOf(int slot) => [_momentum[slot]];

        protected override void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr)
        {
            var m = state[0];
            var direction = (m * _beta1 + g * (1 - _beta1)).sign_();
            if (slot.WeightDecay > 0) p.mul_(1 - lr * slot.WeightDecay);
            p.add_(direction, alpha: -lr);
            m.mul_(_beta2).add_(g, alpha: 1 - _beta2);
        }
    }

    /// <summary>
    /// transformers' Adafactor as its Trainer builds it for <c>adafactor</c>: the given lr (relative_step False,
    /// scale_parameter False, warmup_init False), eps (1e-30, 1e-3), clip_threshold 1, decay_rate −0.8, no first moment.
    /// Matrices keep row and column means of the squared gradient (factored), vectors the full second moment.
    /// </summary>
    sealed class Adafactor : Manual
    {
        const double Eps1 = 1e-30, ClipThreshold = 1.0, DecayRate = -0.8;
        readonly List<Tensor[]> _state;

        public Adafactor(List<Slot> slots) : base(slots)
        {
            _state = Slots.Select(s =>
            {
                var shape = s.Master.shape;
                return shape.Length >= 2
                    ? new[] { Persistent(zeros(shape[..^1], dtype: ScalarType.Float32, device: s.Master.device)), Persistent(zeros([.. shape[..^2], shape[^1]], dtype: ScalarType.Float32, device: s.Master.device)) }
                    : [Persistent(zeros_like(s.Master))];
            }).ToList();
        }

        protected override IEnumerable<Tensor> StateOf(int slot) => _state[slot];

        // Row and column statistics and the update's RMS span the whole matrix.
        protected override bool Elementwise => false;

        static Tensor Rms(Tensor t) => t.norm() / Math.Sqrt(t.numel());

        protected override void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr)
        {
            double beta2t = 1.0 - Math.Pow(slot.Steps, DecayRate);
            var squared = g.square() + Eps1;
            Tensor update;
            if (state.Length == 2)
            {
                var (row, col) = (state[0], state[1]);
                row.mul_(beta2t).add_(squared.mean([-1]), alpha: 1 - beta2t);
                col.mul_(beta2t).add_(squared.mean([-2]), alpha: 1 - beta2t);
                var rowFactor = (row / row.mean([-1], keepdim: true)).rsqrt().unsqueeze(-1);
                var colFactor = col.unsqueeze(-2).rsqrt();
                update = rowFactor * colFactor * g;
            }
            else
            {
                var second = state[0];
                second.mul_(beta2t).add_(squared, alpha: 1 - beta2t);
                update = second.rsqrt() * g;
            }
            update = update / (Rms(update) / ClipThreshold).clamp_min(1.0) * lr;
            if (slot.WeightDecay != 0) p.add_(p, alpha: -slot.WeightDecay * lr);
            p.sub_(update);
        }
    }
}

/// <summary>
/// ZeRO stage 1/2 bookkeeping over the flat space of all trained parameters (in their given order, the same on every
/// rank): rank r owns elements [r·B, (r+1)·B), B = ⌈total / ranks⌉, keeps the optimizer state and the summed gradient of
/// those elements only, updates them, and all-gathers the parameters afterwards. Collectives go in buckets, so the
/// transient buffers stay a few MiB whatever the model size.
/// </summary>
internal sealed class Shard : IDisposable
{
    const long BucketElements = 1 << 22;
    readonly DataParallel _parallel;
    readonly IReadOnlyList<Parameter> _parameters;
    readonly long[] _offsets;
    readonly long _block, _lo;
    /// <summary>This rank's share of the gradients summed over ranks (fp32, B elements).</summary>
    readonly Tensor _gradient;
    /// <summary>Stage 1: fp32 sums of the local low-precision gradients over a window's micro-batches.</summary>
    readonly Tensor?[] _localSums;
    readonly Dictionary<long, Tensor> _pieceGradients = [];

    public long Total { get; }
    public int Stage => _parallel.ZeroStage;
    /// <summary>The parameter pieces this rank owns: parameter index, start and length inside it, start in the flat space.</summary>
    public IReadOnlyList<(int Index, long Start, long Length, long FlatStart)> Pieces { get; }

    public Shard(DataParallel parallel, IReadOnlyList<Parameter> parameters)
    {
        _parallel = parallel;
        _parameters = parameters;
        _offsets = new long[parameters.Count + 1];
        for (int i = 0; i < parameters.Count; i++) _offsets[i + 1] = _offsets[i] + parameters[i].numel();
        Total = _offsets[^1];
        int ranks = parallel.World.WorldSize;
        _block = (Total + ranks - 1) / ranks;
        _lo = Math.Min(Total, parallel.World.Rank * _block);
        long hi = Math.Min(Total, _lo + _block);
        var pieces = new List<(int, long, long, long)>();
        for (int i = 0; i < parameters.Count; i++)
        {
            long start = Math.Max(_lo, _offsets[i]), end = Math.Min(hi, _offsets[i + 1]);
            if (end > start) pieces.Add((i, start - _offsets[i], end - start, start));
        }
        Pieces = pieces;
        _gradient = zeros(_block, dtype: ScalarType.Float32, device: parameters[0].device).DetachFromDisposeScope();
        foreach (var (_, _, length, flatStart) in pieces)
            _pieceGradients[flatStart] = _gradient.narrow(0, flatStart - _lo, length).DetachFromDisposeScope();
        _localSums = new Tensor?[parameters.Count];
    }

    public Tensor GradientOf(long flatStart) => _pieceGradients[flatStart];

    /// <summary>Stage 1: a micro-batch's low-precision gradients added into fp32 sums (as the unsharded optimizer does).</summary>
    public void CollectLocal()
    {
        for (int i = 0; i < _parameters.Count; i++)
        {
            if (_parameters[i].dtype == ScalarType.Float32 || _parameters[i].grad is not { } g) continue;
            _localSums[i] ??= zeros(g.shape, dtype: ScalarType.Float32, device: g.device).DetachFromDisposeScope();
            _localSums[i]!.add_(g);
            g.zero_();
        }
    }

    /// <summary>
    /// Sums the local gradients over ranks, adding this rank's share into its gradient, then clears the local ones.
    /// </summary>
    public void ReduceScatter()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        CollectLocal();
        int ranks = _parallel.World.WorldSize;
        long bucket = Math.Max(1, Math.Min(_block, BucketElements));
        var send = empty(ranks * bucket, dtype: ScalarType.Float32, device: _gradient.device);
        var receive = empty(bucket, dtype: ScalarType.Float32, device: _gradient.device);
        for (long j = 0; j < _block; j += bucket)
        {
            long length = Math.Min(bucket, _block - j);
            for (int r = 0; r < ranks; r++)
                CopyFlat(r * _block + j, length, send.narrow(0, r * bucket, bucket), LocalGradient);
            _parallel.World.ReduceScatterSum(send, receive);
            _gradient.narrow(0, j, length).add_(receive.narrow(0, 0, length));
        }
        ClearLocal();
    }

    Tensor? LocalGradient(int i) => _localSums[i] ?? _parameters[i].grad;

    void ClearLocal()
    {
        foreach (var p in _parameters) p.grad?.zero_();
        foreach (var sum in _localSums) sum?.zero_();
    }

    public void ZeroGrad()
    {
        _gradient.zero_();
        ClearLocal();
    }

    /// <summary>After the update: every rank's piece of the parameters copied to all ranks (in the parameters' dtype
    /// when they share one, so bf16 weights travel as bf16).</summary>
    public void GatherParameters()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        int ranks = _parallel.World.WorldSize, rank = _parallel.World.Rank;
        var dtype = _parameters.Select(p => p.dtype).Distinct().Count() == 1 ? _parameters[0].dtype : ScalarType.Float32;
        long bucket = Math.Max(1, Math.Min(_block, BucketElements));
        var buffer = zeros(ranks * bucket, dtype: dtype, device: _gradient.device);
        for (long j = 0; j < _block; j += bucket)
        {
            long length = Math.Min(bucket, _block - j);
            CopyFlat(rank * _block + j, length, buffer.narrow(0, rank * bucket, bucket), i => _parameters[i]);
            _parallel.World.AllGather(buffer);
            for (int r = 0; r < ranks; r++)
                if (r != rank) CopyIntoParameters(r * _block + j, length, buffer.narrow(0, r * bucket, bucket));
        }
    }

    /// <summary>Elements [start, start + length) of the flat space into <paramref name="destination"/>'s head; the rest of it
    /// (past the end of the flat space, or gradients that do not exist) is zeroed.</summary>
    void CopyFlat(long start, long length, Tensor destination, Func<int, Tensor?> source)
    {
        destination.zero_();
        foreach (var (i, inner, outer, n) in Overlaps(start, length))
        {
            if (source(i) is not { } t) continue;
            using var flat = t.detach().reshape(-1);
            using var from = flat.narrow(0, inner, n);
            using var to = destination.narrow(0, outer, n);
            to.copy_(from);
        }
    }

    void CopyIntoParameters(long start, long length, Tensor source)
    {
        foreach (var (i, inner, outer, n) in Overlaps(start, length))
        {
            using var flat = _parameters[i].detach().view(-1);
            using var to = flat.narrow(0, inner, n);
            using var from = source.narrow(0, outer, n);
            to.copy_(from);
        }
    }

    /// <summary>The parameters overlapping flat range [start, start + length): index, offset inside the parameter,
    /// offset inside the range, element count.</summary>
    IEnumerable<(int Index, long Inner, long Outer, long Count)> Overlaps(long start, long length)
    {
        long end = Math.Min(Total, start + length);
        if (end <= start) yield break;
        // The first parameter ending after start (offsets ascend).
        int first = Array.BinarySearch(_offsets, start);
        first = first >= 0 ? first : ~first - 1;
        for (int i = Math.Max(0, first); i < _parameters.Count && _offsets[i] < end; i++)
        {
            long a = Math.Max(start, _offsets[i]), b = Math.Min(end, _offsets[i + 1]);
            if (b > a) yield return (i, a - _offsets[i], a - start, b - a);
        }
    }

    public void Dispose()
    {
        foreach (var t in _pieceGradients.Values) t.Dispose();
        _gradient.Dispose();
        foreach (var t in _localSums) t?.Dispose();
    }
}
