using System.Numerics;

namespace Axolotl.Data;

/// <summary>
/// NumPy's <c>default_rng(seed)</c> as far as Hugging Face datasets' <c>shuffle(seed)</c> and
/// <c>train_test_split(seed)</c> use it: a SeedSequence seeds PCG64 (the 128-bit LCG with the XSL-RR output), and
/// <c>permutation(n)</c> shuffles 0..n-1 from the last index down, drawing each swap partner by masked rejection
/// (numpy's random_interval: 32-bit draws below 2^32, each 64-bit output giving its low half first, then its high half).
/// Checked against numpy's published PCG64 and SeedSequence test vectors.
/// </summary>
internal sealed class NumpyRandom
{
    static readonly UInt128 Multiplier = new(2549297995355413924UL, 4865540595714422341UL);
    UInt128 state;
    readonly UInt128 increment;
    bool hasHalf;
    uint half;

    /// <summary>PCG64 from its 128-bit initial state and stream, as numpy's pcg64_set_seed takes them (high word first).</summary>
    public NumpyRandom(ulong stateHigh, ulong stateLow, ulong streamHigh, ulong streamLow)
    {
        increment = (new UInt128(streamHigh, streamLow) << 1) | 1;
        Step();
        state += new UInt128(stateHigh, stateLow);
        Step();
    }

    /// <summary><c>np.random.default_rng(seed)</c>: PCG64 seeded with four 64-bit words from <c>SeedSequence(seed)</c>.</summary>
    public static NumpyRandom DefaultRng(BigInteger seed)
    {
        var words = SeedSequence.GenerateState64(SeedSequence.Words(seed), 4);
        return new NumpyRandom(words[0], words[1], words[2], words[3]);
    }

    void Step() => state = unchecked(state * Multiplier + increment);

    public ulong NextUInt64()
    {
        Step();
        ulong high = (ulong)(state >> 64), low = (ulong)state;
        return BitOperations.RotateRight(high ^ low, (int)(state >> 122));
    }

    public uint NextUInt32()
    {
        if (hasHalf)
        {
            hasHalf = false;
            return half;
        }
        var next = NextUInt64();
        hasHalf = true;
        half = (uint)(next >> 32);
        return (uint)next;
    }

    /// <summary>numpy's random_interval: uniform in [0, max], by drawing under the smallest all-ones mask and rejecting.</summary>
    public ulong Interval(ulong max)
    {
        if (max == 0) return 0;
        ulong mask = max;
        for (int shift = 1; shift <= 32; shift <<= 1) mask |= mask >> shift;
        ulong value;
        if (max <= uint.MaxValue)
            do value = NextUInt32() & mask; while (value > max);
        else
            do value = NextUInt64() & mask; while (value > max);
        return value;
    }

    /// <summary><c>Generator.permutation(n)</c>: np.arange(n) shuffled in place.</summary>
    public int[] Permutation(int n)
    {
        var items = new int[n];
        for (int i = 0; i < n; i++) items[i] = i;
        for (int i = n - 1; i >= 1; i--)
        {
            int j = (int)Interval((ulong)i);
            (items[i], items[j]) = (items[j], items[i]);
        }
        return items;
    }
}

/// <summary>NumPy's SeedSequence (pool of four 32-bit words) for a plain non-negative integer entropy.</summary>
internal static class SeedSequence
{
    const uint InitA = 0x43b0d7e5, MultA = 0x931e8875, InitB = 0x8b51f9dd, MultB = 0x58f38ded;
    const uint MixMultL = 0xca01f9dd, MixMultR = 0x4973f715;
    const int PoolSize = 4;

    /// <summary>An integer as numpy coerces it: 32-bit words, lowest first; zero is one zero word.</summary>
    public static uint[] Words(BigInteger n)
    {
        if (n < 0) throw new ArgumentOutOfRangeException(nameof(n), "numpy seeds must be non-negative.");
        var words = new List<uint>();
        do
        {
            words.Add((uint)(n & uint.MaxValue));
            n >>= 32;
        } while (n > 0);
        return [.. words];
    }

    static uint HashMix(uint value, ref uint hashConst)
    {
        unchecked
        {
            value ^= hashConst;
            hashConst *= MultA;
            value *= hashConst;
            return value ^ (value >> 16);
        }
    }

    static uint Mix(uint x, uint y)
    {
        unchecked
        {
            uint result = MixMultL * x - MixMultR * y;
            return result ^ (result >> 16);
        }
    }

    static uint[] Pool(uint[] entropy)
    {
        var pool = new uint[PoolSize];
        uint hashConst = InitA;
        for (int i = 0; i < PoolSize; i++) pool[i] = HashMix(i < entropy.Length ? entropy[i] : 0, ref hashConst);
        for (int src = 0; src < PoolSize; src++)
            for (int dst = 0; dst < PoolSize; dst++)
                if (src != dst) pool[dst] = Mix(pool[dst], HashMix(pool[src], ref hashConst));
        for (int src = PoolSize; src < entropy.Length; src++)
            for (int dst = 0; dst < PoolSize; dst++)
                pool[dst] = Mix(pool[dst], HashMix(entropy[src], ref hashConst));
        return pool;
    }

    /// <summary><c>SeedSequence(entropy).generate_state(n)</c> in 32-bit words.</summary>
    public static uint[] GenerateState(uint[] entropy, int words)
    {
        var pool = Pool(entropy);
        var state = new uint[words];
        uint hashConst = InitB;
        unchecked
        {
            for (int i = 0; i < words; i++)
            {
                uint value = pool[i % PoolSize] ^ hashConst;
                hashConst *= MultB;
                value *= hashConst;
                state[i] = value ^ (value >> 16);
            }
        }
        return state;
    }

    /// <summary><c>generate_state(n, np.uint64)</c>: twice the 32-bit words, paired little-endian.</summary>
    public static ulong[] GenerateState64(uint[] entropy, int words)
    {
        var state = GenerateState(entropy, 2 * words);
        var result = new ulong[words];
        for (int i = 0; i < words; i++) result[i] = state[2 * i] | (ulong)state[2 * i + 1] << 32;
        return result;
    }
}
