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
        var groups = (o.LoraPlusLrRatio is double ratio
                ? new[] { (Decay: 0.0, Scale: 1.0, Params: trainable.Where(p => !IsLoraPlusB(p))), (Decay: 0.0, Scale: ratio, Params: trainable.Where(IsLoraPlusB)) }
                : new[] { (Decay: o.WeightDecay, Scale: 1.0, Params: trainable.Where(p => !NoDecay(p.Name))), (Decay: 0.0, Scale: 1.0, Params: trainable.Where(p => NoDecay(p.Name))) })
            .Select(g => (g.Decay, g.Scale, Params: g.Params.Select(p => p.Parameter).ToList())).Where(g => g.Params.Count > 0).ToList();
        var weighted = groups.SelectMany(g => g.Params.Select(p => (p, g.Decay))).ToList();
        var scales = groups.Select(g => g.Scale).ToArray();
        if (o.LoraPlusLrRatio is not null && name is not ("adamw_torch" or "adamw_torch_fused" or "sgd"))
            throw new UserError($"loraplus_lr_ratio is implemented with the adamw_torch and sgd optimizers, not '{name}'.");
        return name switch
        {
            "adamw_torch" or "adamw_torch_fused" => new Torch(optim.AdamW(
                groups.Select(g => new AdamW.ParamGroup(g.Params, o.LearningRate * g.Scale, o.Beta1, o.Beta2, o.Epsilon, g.Decay)).ToList(),
                o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay), scales),
            // transformers passes SGD nothing but lr (and the groups' weight decay): no momentum.
            "sgd" => new Torch(optim.SGD(
                groups.Select(g => new SGD.ParamGroup(g.Params, o.LearningRate * g.Scale, 0.0, 0.0, g.Decay, false, false)).ToList(), o.LearningRate), scales),
            "adafactor" => new Adafactor(weighted),
            "lion_32bit" => new Lion(weighted, o.Beta1, o.Beta2),
            _ => throw new ArgumentOutOfRangeException(nameof(name), name, "unknown optimizer"),
        };
    }

    /// <summary>One update of every parameter from its .grad with learning rate <paramref name="lr"/>.</summary>
    public abstract void Step(double lr);
    public abstract void ZeroGrad();
    public abstract void Save(BinaryWriter writer);
    public abstract void Load(BinaryReader reader);
    public virtual void Dispose() { }

    /// <summary>TorchSharp's own optimizers (AdamW, SGD), in TorchSharp's state format.</summary>
    sealed class Torch(OptimizerHelper inner, double[] groupLrScales) : TrainingOptimizer
    {
        public override void Step(double lr)
        {
            foreach (var (group, scale) in inner.ParamGroups.Zip(groupLrScales)) ((ParamGroup)group).LearningRate = lr * scale;
            inner.step();
        }
        public override void ZeroGrad() => inner.zero_grad();
        public override void Save(BinaryWriter writer) => inner.save_state_dict(writer);
        public override void Load(BinaryReader reader) => inner.load_state_dict(reader);
    }

    /// <summary>Update rules written here on tensors: per-parameter state tensors created up front, saved in order.</summary>
    abstract class Manual(List<(Parameter Parameter, double WeightDecay)> parameters) : TrainingOptimizer
    {
        protected readonly List<(Parameter Parameter, double WeightDecay)> Parameters = parameters;
        protected abstract IEnumerable<Tensor> State { get; }
        protected long StepCount;

        public override void ZeroGrad()
        {
            foreach (var (p, _) in Parameters) p.grad?.zero_();
        }

        public override void Save(BinaryWriter writer)
        {
            writer.Write(StepCount);
            foreach (var t in State) t.Save(writer);
        }

        public override void Load(BinaryReader reader)
        {
            StepCount = reader.ReadInt64();
            foreach (var t in State) t.Load(reader);
        }

        public override void Dispose()
        {
            foreach (var t in State) t.Dispose();
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
        protected override IEnumerable<Tensor> State => _momentum;

        public Lion(List<(Parameter, double)> parameters, double beta1, double beta2) : base(parameters)
        {
            (_beta1, _beta2) = (beta1, beta2);
            _momentum = Parameters.Select(p => zeros_like(p.Parameter, dtype: ScalarType.Float32)).ToList();
        }

        public override void Step(double lr)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            StepCount++;
            for (int i = 0; i < Parameters.Count; i++)
            {
                var (p, decay) = Parameters[i];
                if (p.grad is not { } g) continue;
                var m = _momentum[i];
                var direction = (m * _beta1 + g * (1 - _beta1)).sign_();
                if (decay > 0) p.mul_(1 - lr * decay);
                p.add_(direction, alpha: -lr);
                m.mul_(_beta2).add_(g, alpha: 1 - _beta2);
            }
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
        protected override IEnumerable<Tensor> State => _state.SelectMany(s => s);

        public Adafactor(List<(Parameter, double)> parameters) : base(parameters)
        {
            _state = Parameters.Select(p =>
            {
                var shape = p.Parameter.shape;
                return shape.Length >= 2
                    ? new[] { zeros(shape[..^1], dtype: ScalarType.Float32, device: p.Parameter.device), zeros([.. shape[..^2], shape[^1]], dtype: ScalarType.Float32, device: p.Parameter.device) }
                    : [zeros_like(p.Parameter, dtype: ScalarType.Float32)];
            }).ToList();
        }

        static Tensor Rms(Tensor t) => t.norm() / Math.Sqrt(t.numel());

        public override void Step(double lr)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            StepCount++;
            double beta2t = 1.0 - Math.Pow(StepCount, DecayRate);
            for (int i = 0; i < Parameters.Count; i++)
            {
                var (p, decay) = Parameters[i];
                if (p.grad is not { } g) continue;
                var squared = g.square() + Eps1;
                Tensor update;
                if (_state[i].Length == 2)
                {
                    var (row, col) = (_state[i][0], _state[i][1]);
                    row.mul_(beta2t).add_(squared.mean([-1]), alpha: 1 - beta2t);
                    col.mul_(beta2t).add_(squared.mean([-2]), alpha: 1 - beta2t);
                    var rowFactor = (row / row.mean([-1], keepdim: true)).rsqrt().unsqueeze(-1);
                    var colFactor = col.unsqueeze(-2).rsqrt();
                    update = rowFactor * colFactor * g;
                }
                else
                {
                    var second = _state[i][0];
                    second.mul_(beta2t).add_(squared, alpha: 1 - beta2t);
                    update = second.rsqrt() * g;
                }
                update = update / (Rms(update) / ClipThreshold).clamp_min(1.0) * lr;
                if (decay != 0) p.add_(p, alpha: -decay * lr);
                p.sub_(update);
            }
        }
    }
}
