namespace Axolotl.Training;

/// <summary>
/// NumPy's legacy global generator (<c>np.random.seed(n)</c>, then <c>np.random.choice</c>/<c>permutation</c>): MT19937
/// seeded by its init_genrand rule, and a permutation that swaps from the last index down, each partner drawn by
/// random_interval (32-bit outputs under the smallest all-ones mask, rejected above the bound). What transformers'
/// set_seed seeds and Axolotl's LISA callback draws from.
/// </summary>
internal sealed class NumpyRandomState
{
    const int N = 624, M = 397;
    readonly uint[] _mt = new uint[N];
    int _index;

    /// <summary><c>np.random.seed(seed)</c> for a seed in [0, 2³²).</summary>
    public NumpyRandomState(uint seed)
    {
        _mt[0] = seed;
        for (int i = 1; i < N; i++) _mt[i] = unchecked(1812433253u * (_mt[i - 1] ^ (_mt[i - 1] >> 30)) + (uint)i);
        _index = N;
    }

    public uint NextUInt32()
    {
        if (_index >= N)
        {
            for (int k = 0; k < N; k++)
            {
                uint y = (_mt[k] & 0x80000000u) | (_mt[(k + 1) % N] & 0x7fffffffu);
                _mt[k] = _mt[(k + M) % N] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908b0dfu : 0u);
            }
            _index = 0;
        }
        uint v = _mt[_index++];
        v ^= v >> 11;
        v ^= (v << 7) & 0x9d2c5680u;
        v ^= (v << 15) & 0xefc60000u;
        v ^= v >> 18;
        return v;
    }

    /// <summary>random_interval: uniform in [0, max].</summary>
    public uint Interval(uint max)
    {
        if (max == 0) return 0;
        uint mask = max;
        mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4; mask |= mask >> 8; mask |= mask >> 16;
        uint value;
        while ((value = NextUInt32() & mask) > max) { }
        return value;
    }

    /// <summary><c>np.random.permutation(n)</c>.</summary>
    public int[] Permutation(int n)
    {
        var a = Enumerable.Range(0, n).ToArray();
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)Interval((uint)i);
            (a[i], a[j]) = (a[j], a[i]);
        }
        return a;
    }

    /// <summary><c>np.random.choice(range(n), k, replace=False)</c>: the first k of a permutation.</summary>
    public int[] ChooseWithoutReplacement(int n, int k) => Permutation(n)[..k];
}
