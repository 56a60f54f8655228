using Axolotl.Quantization;
using static TorchSharp.torch;

namespace Axolotl.Training;

internal abstract partial class TrainingOptimizer
{
    /// <summary>
    /// bitsandbytes' 8-bit AdamW as transformers builds it for these names (optim_bits 8; paged_adamw_8bit only adds
    /// CUDA unified-memory paging of the state, which has no meaning on a CPU, so it is the same optimizer here).
    /// </summary>
    public static readonly IReadOnlySet<string> EightBitAdamW = new HashSet<string> { "adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit" };

    /// <summary>
    /// bitsandbytes' Optimizer2State with 8-bit blockwise state (its CPU kernel's update): each moment is kept as one byte
    /// per element, a code of the dynamic map (signed for exp_avg, unsigned for exp_avg_sq) times the absmax of its block
    /// of 256 elements. A step dequantizes a chunk of the moments, applies torch's AdamW update to them in fp32, updates the
    /// parameter from those fp32 moments, and re-quantizes them (new absmax per block, each value to the nearest code;
    /// a value exactly between two codes takes the lower, as bnb's bucketize over the midpoints). Tensors with fewer than
    /// 4096 elements (min_8bit_size) keep fp32 moments; percentile clipping is off, as bnb's default.
    /// </summary>
    sealed class AdamW8Bit : Manual
    {
        public const int BlockSize = 256;
        public const long MinEightBitSize = 4096;
        // Whole blocks per chunk, so a chunk's blocks are the tensor's blocks.
        const long Chunk = BlockSize * 2048L;
        readonly double _beta1, _beta2, _eps;
        readonly List<Tensor[]> _state;
        readonly Tensor _signedCode, _unsignedCode, _signedBounds, _unsignedBounds;

        public AdamW8Bit(List<Slot> slots, double beta1, double beta2, double eps) : base(slots)
        {
            (_beta1, _beta2, _eps) = (beta1, beta2, eps);
            var device = slots.Count > 0 ? slots[0].Master.device : CPU;
            _signedCode = Persistent(tensor(Blockwise8Bit.DynamicMap, device: device));
            _unsignedCode = Persistent(tensor(Blockwise8Bit.UnsignedDynamicMap, device: device));
            _signedBounds = Persistent(Midpoints(_signedCode));
            _unsignedBounds = Persistent(Midpoints(_unsignedCode));
            _state = Slots.Select(s =>
            {
                long n = s.Master.numel();
                if (n < MinEightBitSize) return new[] { Persistent(zeros_like(s.Master)), Persistent(zeros_like(s.Master)) };
                long blocks = (n + BlockSize - 1) / BlockSize;
                // Zero codes decode to the map's lowest value times a zero absmax: the moments start at 0.
                return new[]
                {
                    Persistent(zeros(n, dtype: ScalarType.Byte, device: s.Master.device)), Persistent(zeros(blocks, dtype: ScalarType.Float32, device: s.Master.device)),
                    Persistent(zeros(n, dtype: ScalarType.Byte, device: s.Master.device)), Persistent(zeros(blocks, dtype: ScalarType.Float32, device: s.Master.device)),
                };
            }).ToList();
        }

        static Tensor Midpoints(Tensor code) => (code.narrow(0, 0, code.shape[0] - 1) + code.narrow(0, 1, code.shape[0] - 1)) / 2;

        protected override IEnumerable<Tensor> StateOf(int slot) => _state[slot];

        // The quantisation blocks span chunks of the flattened tensor that the base class's chunking does not align.
        protected override bool Elementwise => false;

        protected override void Update(Slot slot, Tensor p, Tensor g, Tensor[] state, double lr)
        {
            using var flatP = p.view(-1);
            using var flatG = g.reshape(-1);
            long n = flatP.shape[0];
            for (long start = 0; start < n; start += Chunk)
            {
                using var scope = NewDisposeScope();
                long len = Math.Min(Chunk, n - start);
                var pc = flatP.narrow(0, start, len);
                var gc = flatG.narrow(0, start, len);
                if (state.Length == 2)
                {
                    Adam(slot, pc, gc, state[0].view(-1).narrow(0, start, len), state[1].view(-1).narrow(0, start, len), lr);
                    continue;
                }
                long firstBlock = start / BlockSize, blocks = (len + BlockSize - 1) / BlockSize;
                var (codes1, absmax1) = (state[0].narrow(0, start, len), state[1].narrow(0, firstBlock, blocks));
                var (codes2, absmax2) = (state[2].narrow(0, start, len), state[3].narrow(0, firstBlock, blocks));
                var m = Dequantize(codes1, absmax1, _signedCode);
                var v = Dequantize(codes2, absmax2, _unsignedCode);
                Adam(slot, pc, gc, m, v, lr);
                Quantize(m, _signedBounds, codes1, absmax1);
                Quantize(v, _unsignedBounds, codes2, absmax2);
            }
        }

        void Adam(Slot slot, Tensor p, Tensor g, Tensor m, Tensor v, double lr)
        {
            m.mul_(_beta1).add_(g, alpha: 1 - _beta1);
            v.mul_(_beta2).addcmul_(g, g, 1 - _beta2);
            double correction1 = 1 - Math.Pow(_beta1, slot.Steps);
            double correction2 = Math.Sqrt(1 - Math.Pow(_beta2, slot.Steps));
            var denominator = v.sqrt().div_(correction2).add_(_eps);
            if (slot.WeightDecay > 0) p.mul_(1 - lr * slot.WeightDecay);
            p.addcdiv_(m, denominator, -lr / correction1);
        }

        /// <summary>code[codes] × the absmax of each value's block, in fp32.</summary>
        internal static Tensor Dequantize(Tensor codes, Tensor absmax, Tensor code)
        {
            long n = codes.shape[0];
            var values = code.index_select(0, codes.to(ScalarType.Int64));
            return values.mul_(absmax.repeat_interleave(BlockSize).narrow(0, 0, n));
        }

        /// <summary>bnb's quantize_blockwise: absmax per block, value × (1 / absmax) clamped to [−1, 1], the code whose
        /// midpoint interval holds it.</summary>
        internal static void Quantize(Tensor values, Tensor bounds, Tensor codes, Tensor absmax)
        {
            long n = values.shape[0], blocks = absmax.shape[0];
            // A short last block is padded with zeros, which change no absmax.
            var padded = n == blocks * BlockSize ? values : nn.functional.pad(values, [0, blocks * BlockSize - n]);
            var byBlock = padded.view(blocks, BlockSize);
            var max = byBlock.abs().amax([1]);
            var scaled = (byBlock * max.clamp_min(1e-38).reciprocal().unsqueeze(1)).clamp_(-1, 1).view(-1).narrow(0, 0, n);
            codes.copy_(bucketize(scaled, bounds).to(ScalarType.Byte));
            absmax.copy_(max);
        }

        internal override void TransformMoments(int slot, Action<Tensor> transform)
        {
            var state = _state[slot];
            if (state.Length == 2) { base.TransformMoments(slot, transform); return; }
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            foreach (var (codes, absmax, code, bounds) in new[] { (state[0], state[1], _signedCode, _signedBounds), (state[2], state[3], _unsignedCode, _unsignedBounds) })
            {
                var values = Dequantize(codes, absmax, code);
                transform(values);
                Quantize(values, bounds, codes, absmax);
            }
        }

        public override void Dispose()
        {
            base.Dispose();
            foreach (var t in new[] { _signedCode, _unsignedCode, _signedBounds, _unsignedBounds }) t.Dispose();
        }
    }
}
