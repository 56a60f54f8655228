using static TorchSharp.torch;

namespace Axolotl.Training;

internal abstract partial class TrainingOptimizer
{
    /// <summary>
    /// Axolotl's <c>optimizer: muon</c> (axolotl-contribs-mit's MuonOptimizerFactory over Dion's Muon, one process):
    /// trained matrices other than embed_tokens and lm_head get Muon, everything else AdamW (Dion's, which is torch's
    /// rule). Muon: M ← μ·M + G; U = μ·M + G (Nesterov, the factory's default) in bf16; U orthogonalised by five
    /// Newton-Schulz steps (<see cref="NewtonSchulz"/>); p ← p·(1 − lr·wd) − lr·√(rows/cols)·U (adjust_lr spectral_norm).
    /// The factory's defaults: μ 0.95, AdamW betas (0.9, 0.95) unless adam_beta1 and adam_beta2 are set, eps adam_epsilon.
    /// </summary>
    sealed class Muon : Manual
    {
        public const double Momentum = 0.95;
        readonly bool[] _muon;
        readonly double _beta1, _beta2, _eps;
        readonly List<Tensor[]> _state;

        public Muon(List<Slot> slots, bool[] muon, double beta1, double beta2, double eps) : base(slots)
        {
            (_muon, _beta1, _beta2, _eps) = (muon, beta1, beta2, eps);
            _state = Slots.Select((s, i) => muon[i]
                ? new[] { Persistent(zeros_like(s.Master)) }
                : [Persistent(zeros_like(s.Master)), Persistent(zeros_like(s.Master))]).ToList();
        }

        protected override IEnumerable<Tensor> StateOf(int slot) => _state[slot];

        // Newton-Schulz works on whole matrices.
        protected override bool Elementwise => false;

        protected override void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr)
        {
            if (state.Length == 2)
            {
                var (m, v) = (state[0], state[1]);
                m.mul_(_beta1).add_(g, alpha: 1 - _beta1);
                v.mul_(_beta2).addcmul_(g, g, 1 - _beta2);
                var denominator = v.sqrt().div_(Math.Sqrt(1 - Math.Pow(_beta2, slot.Steps))).add_(_eps);
                p.mul_(1 - lr * slot.WeightDecay);
                p.addcdiv_(m, denominator, -lr / (1 - Math.Pow(_beta1, slot.Steps)));
                return;
            }
            var momentum = state[0];
            momentum.mul_(Momentum).add_(g);
            var update = (momentum * Momentum).add_(g).to(ScalarType.BFloat16);
            var orthogonal = NewtonSchulz(update, _eps);
            double adjusted = lr * Math.Sqrt((double)p.shape[0] / p.shape[1]);
            p.mul_(1 - lr * slot.WeightDecay);
            // bf16 times a Python float stays bf16; subtracting it from the fp32 weight promotes.
            p.sub_(orthogonal.mul(adjusted));
        }

        /// <summary>
        /// Dion's zeropower_via_newtonschulz5 in bf16: the wide orientation, scaled to Frobenius norm ≤ 1 (+ eps), then
        /// X ← aX + (bA + cA²)X with A = XXᵀ for its five (a, b, c).
        /// </summary>
        internal static Tensor NewtonSchulz(Tensor g, double eps)
        {
            (double A, double B, double C)[] steps = [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)];
            var x = g.to(ScalarType.BFloat16);
            bool tall = g.shape[0] > g.shape[1];
            if (tall) x = x.mT;
            x = x / (x.norm() + eps); // 2-D: the Frobenius norm over both dimensions
            foreach (var (a, b, c) in steps)
            {
                var gram = x.matmul(x.mT);
                var poly = gram * b + gram.matmul(gram) * c;
                x = x * a + poly.matmul(x);
            }
            return tall ? x.mT : x;
        }
    }

    /// <summary>Muon's Newton-Schulz orthogonalisation (tests).</summary>
    internal static Tensor MuonNewtonSchulz(Tensor g, double eps = 1e-8) => Muon.NewtonSchulz(g, eps);
}

/// <summary>Test access to the optimizers' nested rules.</summary>
internal static class TrainingOptimizerProbe
{
    public static Tensor NewtonSchulz(Tensor g) => TrainingOptimizer.MuonNewtonSchulz(g);
}
