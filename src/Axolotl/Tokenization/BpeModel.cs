using System.Collections.Concurrent;
using System.Text;

namespace Axolotl.Tokenization;

/// <summary>
/// The BPE model of HF tokenizers: per-character symbols (with byte fallback or unknown-token fusion),
/// then merges applied lowest rank first, ties broken by position, exactly as tokenizers' <c>Word::merge_all</c>.
/// </summary>
sealed class BpeModel
{
    const int MaxCachedLength = 256;
    const int CacheCapacity = 100_000;
    const char SpaceMarker = '\u2581';

    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabBySpan;
    readonly Dictionary<int, string> _idToToken;
    readonly Dictionary<long, (int Rank, int NewId)> _merges;
    readonly string? _unkToken, _prefix, _suffix;
    readonly bool _byteFallback, _fuseUnk, _ignoreMerges;
    readonly int[] _byteIds = new int[256];
    readonly string _source;

    // Safe when no merge can join a symbol ending in a non-marker character to one starting with '▁' (and '▁' is
    // a plain vocabulary symbol): then a word's BPE result is the concatenation of the results for its '▁'-led
    // pieces, which cache well. Without a pre-tokenizer (Llama) the "word" is a whole text.
    readonly bool _splitAtSpaceMarker;

    readonly ConcurrentDictionary<string, int[]> _cache = new();
    readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheBySpan;
    int _cacheCount;

    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string A, string B)> merges, string? unkToken,
        string? continuingSubwordPrefix, string? endOfWordSuffix, bool byteFallback, bool fuseUnk, bool ignoreMerges, string source)
    {
        _vocab = vocab;
        _vocabBySpan = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _cacheBySpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        _idToToken = new Dictionary<int, string>(vocab.Count);
        foreach (var (token, id) in vocab) _idToToken.TryAdd(id, token);
        (_unkToken, _prefix, _suffix) = (unkToken, continuingSubwordPrefix, endOfWordSuffix);
        (_byteFallback, _fuseUnk, _ignoreMerges, _source) = (byteFallback, fuseUnk, ignoreMerges, source);
        for (int b = 0; b < 256; b++) _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;

        int prefixLength = continuingSubwordPrefix?.Length ?? 0;
        _merges = new Dictionary<long, (int, int)>(merges.Count, PairComparer.Instance);
        bool splitSafe = !ignoreMerges && vocab.ContainsKey(SpaceMarker.ToString())
            && string.IsNullOrEmpty(continuingSubwordPrefix) && string.IsNullOrEmpty(endOfWordSuffix);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            if (!vocab.TryGetValue(a, out var aId) || !vocab.TryGetValue(b, out var bId))
                throw new UserError($"{source}: merge \"{a} {b}\" (line {rank + 1}) uses a token missing from the vocabulary.");
            var merged = a + b[Math.Min(prefixLength, b.Length)..];
            if (!vocab.TryGetValue(merged, out var newId))
                throw new UserError($"{source}: merge \"{a} {b}\" produces \"{merged}\", which is missing from the vocabulary.");
            _merges[Key(aId, bId)] = (rank, newId); // a repeated pair keeps its last rank, as in tokenizers
            if (b.StartsWith(SpaceMarker) && !a.EndsWith(SpaceMarker)) splitSafe = false;
        }
        _splitAtSpaceMarker = splitSafe;
    }

    public IReadOnlyDictionary<string, int> Vocab => _vocab;
    public int? TokenToId(string token) => _vocab.TryGetValue(token, out var id) ? id : null;
    public string? IdToToken(int id) => _idToToken.GetValueOrDefault(id);

    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    // long.GetHashCode folds the halves with XOR, which collides heavily for pairs of small ids.
    sealed class PairComparer : IEqualityComparer<long>
    {
        public static readonly PairComparer Instance = new();
        public bool Equals(long x, long y) => x == y;
        public int GetHashCode(long key) => (int)(((ulong)key * 0x9E3779B97F4A7C15UL) >> 32);
    }

    /// <summary>Appends the ids of one pre-tokenized word.</summary>
    public void Tokenize(ReadOnlySpan<char> word, List<int> output)
    {
        if (word.IsEmpty) return;
        if (_ignoreMerges && _vocabBySpan.TryGetValue(word, out var whole)) { output.Add(whole); return; }
        if (!_splitAtSpaceMarker) { TokenizeCached(word, output); return; }
        int start = 0;
        for (int i = 1; i < word.Length; i++)
        {
            if (word[i] == SpaceMarker && word[i - 1] != SpaceMarker)
            {
                TokenizeCached(word[start..i], output);
                start = i;
            }
        }
        TokenizeCached(word[start..], output);
    }

    void TokenizeCached(ReadOnlySpan<char> word, List<int> output)
    {
        if (word.Length >= MaxCachedLength) { output.AddRange(MergeWord(word)); return; }
        if (!_cacheBySpan.TryGetValue(word, out var ids))
        {
            ids = MergeWord(word);
            if (Volatile.Read(ref _cacheCount) < CacheCapacity && _cache.TryAdd(word.ToString(), ids))
                Interlocked.Increment(ref _cacheCount);
        }
        output.AddRange(ids);
    }

    int[] MergeWord(ReadOnlySpan<char> word)
    {
        var symbols = new List<int>(word.Length + 4);
        int? unkId = null;
        for (int i = 0; i < word.Length;)
        {
            if (Rune.DecodeFromUtf16(word[i..], out _, out int len) != System.Buffers.OperationStatus.Done) len = 1;
            bool isFirst = i == 0, isLast = i + len >= word.Length;
            var piece = word.Slice(i, len);
            i += len;

            int id;
            bool found;
            string? decorated = null;
            if ((!isFirst && !string.IsNullOrEmpty(_prefix)) || (isLast && !string.IsNullOrEmpty(_suffix)))
            {
                decorated = (isFirst ? "" : _prefix) + piece.ToString() + (isLast ? _suffix : "");
                found = _vocab.TryGetValue(decorated, out id);
            }
            else found = _vocabBySpan.TryGetValue(piece, out id);

            if (found)
            {
                if (unkId is { } pending) { symbols.Add(pending); unkId = null; }
                symbols.Add(id);
                continue;
            }
            if (_byteFallback && TryAddBytes(decorated ?? piece.ToString(), symbols)) continue;
            if (_unkToken is null) continue; // tokenizers drops the character when there is no unknown token
            if (!_vocab.TryGetValue(_unkToken, out var unk))
                throw new UserError($"{_source}: the unknown token \"{_unkToken}\" is missing from the vocabulary.");
            if (unkId is { } previous && !_fuseUnk) symbols.Add(previous);
            unkId = unk;
        }
        if (unkId is { } last) symbols.Add(last);
        return Merge(symbols);
    }

    bool TryAddBytes(string text, List<int> symbols)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        foreach (var b in bytes) if (_byteIds[b] < 0) return false;
        foreach (var b in bytes) symbols.Add(_byteIds[b]);
        return true;
    }

    int[] Merge(List<int> symbols)
    {
        int n = symbols.Count;
        if (n < 2 || _merges.Count == 0) return symbols.ToArray();
        var c = symbols.ToArray();
        var prev = new int[n];
        var next = new int[n];
        var removed = new bool[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }

        var queue = new PriorityQueue<(int Pos, int NewId), long>(n);
        for (int i = 0; i + 1 < n; i++)
            if (_merges.TryGetValue(Key(c[i], c[i + 1]), out var m)) queue.Enqueue((i, m.NewId), Priority(m.Rank, i));

        while (queue.TryDequeue(out var top, out _))
        {
            int pos = top.Pos;
            if (removed[pos] || next[pos] == -1) continue;
            int right = next[pos];
            // Entries go stale when a neighbour merged first; the pair must still produce the same token.
            if (!_merges.TryGetValue(Key(c[pos], c[right]), out var current) || current.NewId != top.NewId) continue;

            c[pos] = top.NewId;
            removed[right] = true;
            next[pos] = next[right];
            if (next[pos] >= 0) prev[next[pos]] = pos;

            if (prev[pos] >= 0 && _merges.TryGetValue(Key(c[prev[pos]], c[pos]), out var left))
                queue.Enqueue((prev[pos], left.NewId), Priority(left.Rank, prev[pos]));
            if (next[pos] >= 0 && _merges.TryGetValue(Key(c[pos], c[next[pos]]), out var after))
                queue.Enqueue((pos, after.NewId), Priority(after.Rank, pos));
        }

        var result = new List<int>(n);
        for (int i = 0; i < n; i++) if (!removed[i]) result.Add(c[i]);
        return result.ToArray();
    }

    static long Priority(int rank, int pos) => ((long)rank << 32) | (uint)pos;
}
