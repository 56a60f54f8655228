using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Training;

/// <summary>
/// The update rule behind <c>optimizer:</c>, as transformers' Trainer builds it: parameter groups with and without
/// weight decay (biases and norm weights get none), the learning rate set before each step, and state that a
/// checkpoint saves and a resume restores exactly.
/// </summary>
public abstract class TrainingOptimizer : IDisposable
{
    /// <summary>The optimizer names <see cref="Create"/> accepts (Axolotl's, which are transformers' OptimizerNames).</summary>
    public static readonly IReadOnlySet<string> Names = new HashSet<string> { "adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "lion_32bit" };

    public static TrainingOptimizer Create(string name, IReadOnlyList<(string Name, Parameter Parameter)> trainable, TrainingOptions o)
    {
        static bool NoDecay(string name) => name.EndsWith(".bias") || name.Contains("norm.weight");
        // LoRA+ (PEFT's create_loraplus_optimizer as Axolotl calls it): lora_B and 1-D parameters at lr × ratio, the rest
        // at lr. Axolotl hands it no weight decay (HF keeps that in the param groups it replaces), so none applies.
        static bool IsLoraPlusB((string Name, Parameter Parameter) p) => p.Name.Contains("lora_B") || p.Parameter.dim() == 1;
        if (o.LoraPlusLrRatio is not null && name is not ("adamw_torch" or "adamw_torch_fused" or "sgd"))
            throw new UserError($"loraplus_lr_ratio is implemented with the adamw_torch and sgd optimizers, not '{name}'.");
        var slots = trainable.Select(p => o.LoraPlusLrRatio is double ratio
                ? new Slot(p.Parameter, 0.0, IsLoraPlusB(p) ? ratio : 1.0)
                : new Slot(p.Parameter, NoDecay(p.Name) ? 0.0 : o.WeightDecay, 1.0)).ToList();
        return name switch
        {
            "adamw_torch" or "adamw_torch_fused" => new AdamW(slots, o.Beta1, o.Beta2, o.Epsilon),
            // transformers passes SGD nothing but lr (and the groups' weight decay): no momentum.
            "sgd" => new Sgd(slots),
            "adafactor" => new Adafactor(slots),
            "lion_32bit" => new Lion(slots, o.Beta1, o.Beta2),
            _ => throw new ArgumentOutOfRangeException(nameof(name), name, "unknown optimizer"),
        };
    }

    /// <summary>
    /// One update of every parameter from its gradient times <paramref name="gradScale"/> (the clipping coefficient)
    /// with learning rate <paramref name="lr"/>.
    /// </summary>
    public abstract void Step(double lr, double gradScale = 1.0);
    public abstract void ZeroGrad();
    /// <summary>The L2 norm of all gradients together, accumulated in fp32 (torch's clip_grad_norm_ total norm).</summary>
    public abstract double GradNorm();
    /// <summary>
    /// Call after each micro-batch's backward when several are accumulated: low-precision gradients are added into fp32
    /// sums, so accumulation does not round in bf16.
    /// </summary>
    public abstract void CollectGradients();
    public abstract void Save(BinaryWriter writer);
    public abstract void Load(BinaryReader reader);
    public virtual void Dispose() { }

    /// <summary>
    /// A trained parameter, its group settings, and the fp32 master copy the update is applied to. A parameter held in
    /// bf16 (a full fine-tune in bf16) gets a separate fp32 master, updated and then rounded into the parameter: the
    /// forward pass reads bf16 weights with no per-step cast, and small updates are not lost to bf16 rounding.
    /// </summary>
    sealed class Slot(Parameter parameter, double weightDecay, double lrScale)
    {
        public readonly Parameter Parameter = parameter;
        public readonly double WeightDecay = weightDecay, LrScale = lrScale;
        public readonly Tensor Master = parameter.dtype == ScalarType.Float32 ? parameter : parameter.detach().to(ScalarType.Float32).DetachFromDisposeScope();
        public bool HasSeparateMaster => !ReferenceEquals(Master, Parameter);
        /// <summary>fp32 sum of collected low-precision gradients (<see cref="CollectGradients"/>), else null.</summary>
        public Tensor? GradSum;
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

        public override void Step(double lr, double gradScale = 1.0)
        {
            using var _ = no_grad();
            StepCount++;
            for (int i = 0; i < Slots.Count; i++)
            {
                var slot = Slots[i];
                if (Gradient(slot) is not { } grad) continue;
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
                using var flatParam = slot.Parameter.view(-1);
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
        }

        /// <summary>The gradient in fp32 times <paramref name="scale"/>, leaving the gradient itself as it is.</summary>
        static Tensor Fp32Scaled(Tensor g, double scale)
        {
            if (g.dtype == ScalarType.Float32) return scale == 1.0 ? g.alias() : g.mul(scale);
            var g32 = g.to(ScalarType.Float32);
            return scale == 1.0 ? g32 : g32.mul_(scale);
        }

        /// <summary>The gradient to apply: collected fp32 sums (with anything not yet collected), else the parameter's own.</summary>
        static Tensor? Gradient(Slot slot)
        {
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
            return Math.Sqrt(squares);
        }

        public override void CollectGradients()
        {
            using var _ = no_grad();
            foreach (var slot in Slots)
            {
                if (!slot.HasSeparateMaster || slot.Parameter.grad is not { } g) continue;
                // Created inside a micro-batch's dispose scope, but lives for the whole run.
                slot.GradSum ??= Persistent(zeros_like(slot.Master));
                slot.GradSum.add_(g);
                g.zero_();
            }
        }

        public override void ZeroGrad()
        {
            foreach (var slot in Slots)
            {
                slot.Parameter.grad?.zero_();
                slot.GradSum?.zero_();
            }
        }

        IEnumerable<Tensor> SavedTensors() => Slots.SelectMany((slot, i) => (slot.HasSeparateMaster ? [slot.Master] : Array.Empty<Tensor>()).Concat(StateOf(i)));

        public override void Save(BinaryWriter writer)
        {
            writer.Write(StepCount);
            foreach (var t in SavedTensors()) t.Save(writer);
        }

        public override void Load(BinaryReader reader)
        {
            StepCount = reader.ReadInt64();
            using var _ = no_grad();
            foreach (var t in SavedTensors()) t.Load(reader);
            foreach (var slot in Slots.Where(s => s.HasSeparateMaster)) slot.Parameter.copy_(slot.Master);
        }

        public override void Dispose()
        {
            foreach (var (slot, i) in Slots.Select((s, i) => (s, i)))
            {
                foreach (var t in StateOf(i)) t.Dispose();
                if (slot.HasSeparateMaster) slot.Master.Dispose();
                slot.GradSum?.Dispose();
            }
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
            double stepSize = lr / (1 - Math.Pow(_beta1, StepCount));
            double correction2Sqrt = Math.Sqrt(1 - Math.Pow(_beta2, StepCount));
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
            double beta2t = 1.0 - Math.Pow(StepCount, DecayRate);
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
