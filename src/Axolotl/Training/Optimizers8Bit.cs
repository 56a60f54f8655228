using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Axolotl.Models;
using TorchSharp;
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
            if (state.Length == 4 && FusedAdamW8Bit.Enabled && !FusedAdamW8Bit.OffOnThisThread && p.device_type == DeviceType.CPU && p.is_contiguous() && g.is_contiguous()
                && p.dtype is ScalarType.Float32 or ScalarType.BFloat16 && g.dtype == ScalarType.Float32)
            {
                FusedAdamW8Bit.Step(p, g, state, _beta1, _beta2, _eps, lr, slot.WeightDecay, slot.Steps);
                return;
            }
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

    /// <summary>
    /// <see cref="AdamW8Bit"/>'s step on the CPU in one pass per block of 256, in place of some twenty torch ops over
    /// the whole tensor (dequantize by index_select, the AdamW update, absmax, bucketize): each block's moments are
    /// decoded from their codes, updated with the gradient, used for the parameter's update, and encoded again (new
    /// absmax, the number of code midpoints below each scaled value: torch.bucketize's rule), parallel over blocks on
    /// torch's threads. fp32 arithmetic in the composition's order; results may differ from it in the last bit.
    /// </summary>
    internal static unsafe class FusedAdamW8Bit
    {
        const int Block = AdamW8Bit.BlockSize;

        /// <summary>Keeps the torch composition on this thread (tests compare the two); AXOLOTL_FUSED_ADAMW8BIT=0 everywhere.</summary>
        [ThreadStatic] internal static bool OffOnThisThread;
        internal static readonly bool Enabled = Environment.GetEnvironmentVariable("AXOLOTL_FUSED_ADAMW8BIT")?.Trim() != "0";

        static readonly float[] SignedCode = Blockwise8Bit.DynamicMap, UnsignedCode = Blockwise8Bit.UnsignedDynamicMap;
        internal static readonly float[] SignedBounds = Midpoints(SignedCode), UnsignedBounds = Midpoints(UnsignedCode);

        static float[] Midpoints(float[] code) => Enumerable.Range(0, code.Length - 1).Select(k => (code[k] + code[k + 1]) / 2).ToArray();

        /// <summary>
        /// For each of the 65,536 leading-16-bit prefixes of an order-preserving key of a float (<see cref="Key"/>), how
        /// many midpoints lie below every float with that prefix. A value's code is that count plus the midpoints within
        /// its prefix's range (a relative width of 2⁻⁷, so at most a few) that are still below it: no binary search.
        /// </summary>
        static readonly byte[] SignedStart = Starts(SignedBounds), UnsignedStart = Starts(UnsignedBounds);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static uint Key(float x)
        {
            uint bits = BitConverter.SingleToUInt32Bits(x);
            return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
        }

        /// <summary>The midpoints padded with +∞ to 256 entries, so an index that reached 255 stays there (AVX2 encoding).</summary>
        static readonly float[] SignedBoundsPadded = [.. SignedBounds, float.PositiveInfinity], UnsignedBoundsPadded = [.. UnsignedBounds, float.PositiveInfinity];

        /// <summary>The most midpoints sharing one key prefix: how many comparisons the AVX2 encoding makes after the table.</summary>
        static readonly int SignedSteps = MostPerPrefix(SignedBounds), UnsignedSteps = MostPerPrefix(UnsignedBounds);

        static int MostPerPrefix(float[] bounds) => bounds.GroupBy(b => Key(b) >> 16).Max(g => g.Count());

        /// <summary>Takes the scalar loops on this thread's steps (tests compare them with the AVX2 ones).</summary>
        [ThreadStatic] internal static bool ScalarOnThisThread;

        static byte[] Starts(float[] bounds)
        {
            // 3 bytes of padding: the AVX2 encoding reads the start as the low byte of a 32-bit gather.
            var starts = new byte[(1 << 16) + 3];
            int below = 0;
            for (uint prefix = 0; prefix < 1u << 16; prefix++)
            {
                uint lowest = prefix << 16;
                while (below < bounds.Length && Key(bounds[below]) < lowest) below++;
                starts[prefix] = (byte)below;
            }
            return starts;
        }

        public static void Step(Tensor p, Tensor g, Tensor[] state, double beta1, double beta2, double eps, double lr, double weightDecay, long steps)
        {
            long n = p.numel();
            bool bf16 = p.dtype == ScalarType.BFloat16;
            float b1 = (float)beta1, b2 = (float)beta2, oneMinusB1 = (float)(1 - beta1), oneMinusB2 = (float)(1 - beta2), epsilon = (float)eps;
            float c2 = (float)Math.Sqrt(1 - Math.Pow(beta2, steps));
            float stepSize = (float)(-lr / (1 - Math.Pow(beta1, steps)));
            float decay = weightDecay > 0 ? (float)(1 - lr * weightDecay) : 1f;
            long blocks = (n + Block - 1) / Block;
            bool vector = Avx2.IsSupported && !ScalarOnThisThread;
            fixed (byte* pStart = p.bytes) fixed (byte* gStart = g.bytes)
            fixed (byte* c1Start = state[0].bytes) fixed (byte* a1Start = state[1].bytes) fixed (byte* c2Start = state[2].bytes) fixed (byte* a2Start = state[3].bytes)
            fixed (float* signed = SignedCode) fixed (float* unsigned = UnsignedCode) fixed (float* signedBounds = SignedBounds) fixed (float* unsignedBounds = UnsignedBounds)
            fixed (byte* signedStart = SignedStart) fixed (byte* unsignedStart = UnsignedStart)
            fixed (float* signedPadded = SignedBoundsPadded) fixed (float* unsignedPadded = UnsignedBoundsPadded)
            {
                nint pAt = (nint)pStart, gAt = (nint)gStart, c1At = (nint)c1Start, a1At = (nint)a1Start, c2At = (nint)c2Start, a2At = (nint)a2Start;
                nint sAt = (nint)signed, uAt = (nint)unsigned, ssAt = (nint)signedStart, usAt = (nint)unsignedStart;
                nint sbAt = (nint)(vector ? signedPadded : signedBounds), ubAt = (nint)(vector ? unsignedPadded : unsignedBounds);
                CpuKernels.ForChunks(blocks, 64, (first, last) =>
                {
                    float* m = stackalloc float[Block];
                    float* v = stackalloc float[Block];
                    float* w = stackalloc float[Block];
                    for (long b = first; b < last; b++)
                    {
                        long at = b * Block;
                        int len = (int)Math.Min(Block, n - at);
                        var codes1 = (byte*)c1At + at;
                        var codes2 = (byte*)c2At + at;
                        ref float absmax1 = ref ((float*)a1At)[b];
                        ref float absmax2 = ref ((float*)a2At)[b];
                        CpuKernels.Load((byte*)pAt + at * (bf16 ? 2 : 4), bf16, w, len);
                        float max1 = Moments(codes1, absmax1, codes2, absmax2, (float*)sAt, (float*)uAt, (float*)gAt + at, m, v, w, len,
                            b1, oneMinusB1, b2, oneMinusB2, c2, epsilon, stepSize, decay, vector, out float max2);
                        CpuKernels.Store(w, (byte*)pAt + at * (bf16 ? 2 : 4), bf16, len);
                        Encode(m, len, max1, (float*)sbAt, (byte*)ssAt, codes1, vector ? SignedSteps : -1);
                        Encode(v, len, max2, (float*)ubAt, (byte*)usAt, codes2, vector ? UnsignedSteps : -1);
                        absmax1 = max1;
                        absmax2 = max2;
                    }
                });
            }
        }

        /// <summary>Decodes a block's moments, applies the AdamW update to them and to the weights; returns max |m| (and max |v|).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        static float Moments(byte* codes1, float absmax1, byte* codes2, float absmax2, float* signed, float* unsigned, float* g, float* m, float* v, float* w,
            int len, float b1, float oneMinusB1, float b2, float oneMinusB2, float c2, float eps, float stepSize, float decay, bool vector, out float max2)
        {
            float max1 = 0;
            max2 = 0;
            int i = 0;
            if (vector)
            {
                // Eight at a time, the same operations in the same order as the scalar loop below (no fused multiply-adds),
                // so every value rounds the same; the codes' map entries are gathered.
                var vAbsmax1 = Vector256.Create(absmax1); var vAbsmax2 = Vector256.Create(absmax2);
                var vB1 = Vector256.Create(b1); var vB2 = Vector256.Create(b2);
                var vOneMinusB1 = Vector256.Create(oneMinusB1); var vOneMinusB2 = Vector256.Create(oneMinusB2);
                var vC2 = Vector256.Create(c2); var vEps = Vector256.Create(eps); var vStep = Vector256.Create(stepSize); var vDecay = Vector256.Create(decay);
                var signBit = Vector256.Create(-0f);
                Vector256<float> vMax1 = Vector256<float>.Zero, vMax2 = Vector256<float>.Zero;
                for (; i + 8 <= len; i += 8)
                {
                    var gi = Avx.LoadVector256(g + i);
                    var mapped1 = Avx2.GatherVector256(signed, Avx2.ConvertToVector256Int32(codes1 + i), 4);
                    var mapped2 = Avx2.GatherVector256(unsigned, Avx2.ConvertToVector256Int32(codes2 + i), 4);
                    var mi = Avx.Add(Avx.Multiply(Avx.Multiply(mapped1, vAbsmax1), vB1), Avx.Multiply(vOneMinusB1, gi));
                    var vi = Avx.Add(Avx.Multiply(Avx.Multiply(mapped2, vAbsmax2), vB2), Avx.Multiply(Avx.Multiply(vOneMinusB2, gi), gi));
                    var denominator = Avx.Add(Avx.Divide(Avx.Sqrt(vi), vC2), vEps);
                    var wi = Avx.LoadVector256(w + i);
                    Avx.Store(w + i, Avx.Add(Avx.Multiply(wi, vDecay), Avx.Multiply(vStep, Avx.Divide(mi, denominator))));
                    Avx.Store(m + i, mi);
                    Avx.Store(v + i, vi);
                    vMax1 = Avx.Max(vMax1, Avx.AndNot(signBit, mi));
                    vMax2 = Avx.Max(vMax2, Avx.AndNot(signBit, vi));
                }
                for (int k = 0; k < 8; k++) { max1 = MathF.Max(max1, vMax1.GetElement(k)); max2 = MathF.Max(max2, vMax2.GetElement(k)); }
            }
            for (; i < len; i++)
            {
                float gi = g[i];
                // As the composition: m·β1 + (1 − β1)·g, v·β2 + (1 − β2)·g·g, then w·(1 − lr·wd) + step · m / (√v / c2 + ε).
                float mi = signed[codes1[i]] * absmax1 * b1 + oneMinusB1 * gi;
                float vi = unsigned[codes2[i]] * absmax2 * b2 + oneMinusB2 * gi * gi;
                float denominator = MathF.Sqrt(vi) / c2 + eps;
                w[i] = w[i] * decay + stepSize * (mi / denominator);
                m[i] = mi;
                v[i] = vi;
                max1 = MathF.Max(max1, MathF.Abs(mi));
                max2 = MathF.Max(max2, MathF.Abs(vi));
            }
            return max1;
        }

        /// <summary>The codes of <paramref name="values"/> (absmax 1) under the signed or unsigned map: for tests.</summary>
        internal static byte[] Encode(float[] values, bool signed)
        {
            var codes = new byte[values.Length];
            bool vector = Avx2.IsSupported && !ScalarOnThisThread;
            var bounds = vector ? (signed ? SignedBoundsPadded : UnsignedBoundsPadded) : signed ? SignedBounds : UnsignedBounds;
            fixed (float* v = values) fixed (float* b = bounds) fixed (byte* s = signed ? SignedStart : UnsignedStart) fixed (byte* c = codes)
                Encode(v, values.Length, 1f, b, s, c, vector ? (signed ? SignedSteps : UnsignedSteps) : -1);
            return codes;
        }

        /// <summary>
        /// Each value × (1 / absmax), clamped to [−1, 1], as the count of the 255 sorted midpoints below it. With
        /// <paramref name="steps"/> ≥ 0 (AVX2; <paramref name="bounds"/> padded with +∞ to 256), eight at a time: the table's
        /// count, then that many gathered comparisons, each moving on past a midpoint still below the value; midpoints are
        /// sorted, so the result is the scalar loop's.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        static void Encode(float* values, int len, float absmax, float* bounds, byte* starts, byte* codes, int steps)
        {
            float inverse = 1f / MathF.Max(absmax, 1e-38f);
            int i = 0;
            if (steps >= 0)
            {
                var vInverse = Vector256.Create(inverse);
                var minusOne = Vector256.Create(-1f); var one = Vector256.Create(1f);
                var topBit = Vector256.Create(0x80000000u).AsInt32();
                var lowByte = Vector256.Create(0xFF);
                int* lanes = stackalloc int[8];
                for (; i + 8 <= len; i += 8)
                {
                    var x = Avx.Min(Avx.Max(Avx.Multiply(Avx.LoadVector256(values + i), vInverse), minusOne), one);
                    // Key: negative floats' bits inverted, positive ones' top bit set (order-preserving as unsigned).
                    var bits = x.AsInt32();
                    var key = Avx2.Xor(bits, Avx2.Or(Avx2.ShiftRightArithmetic(bits, 31), topBit));
                    var prefix = Avx2.ShiftRightLogical(key, 16);
                    var index = Avx2.And(Avx2.GatherVector256((int*)starts, prefix, 1), lowByte);
                    for (int k = 0; k < steps; k++)
                    {
                        var below = Avx.CompareLessThan(Avx2.GatherVector256(bounds, index, 4), x).AsInt32();
                        index = Avx2.Subtract(index, below); // below is −1 where the midpoint is still below the value
                    }
                    Avx.Store(lanes, index);
                    for (int k = 0; k < 8; k++) codes[i + k] = (byte)lanes[k];
                }
            }
            for (; i < len; i++)
            {
                float x = Math.Clamp(values[i] * inverse, -1f, 1f);
                int index = starts[Key(x) >> 16];
                while (index < 255 && bounds[index] < x) index++;
                codes[i] = (byte)index;
            }
        }
    }
}
