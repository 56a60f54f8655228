using System.Buffers;
using System.Collections;
using System.IO.MemoryMappedFiles;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Types;

namespace Axolotl.Data;

/// <summary>
/// Examples read in place from Arrow IPC stream files (what HF datasets' save_to_disk writes) mapped into memory:
/// opening reads only the schema and record batch headers, and a row's input_ids and labels are copied out when it is
/// asked for, so a cache of any size opens in milliseconds and costs no managed memory until rows are used. Each file
/// holds list&lt;int32&gt; columns <c>input_ids</c> and <c>labels</c> (one or more record batches) and is at most 2 GiB,
/// the most a <see cref="Memory{T}"/> (and Apache.Arrow's readers over one) can span; larger sets are several files.
/// Disposing unmaps the files; reading a row afterwards throws.
/// </summary>
internal sealed unsafe class MappedExamples : IReadOnlyList<Example>, IDisposable
{
    /// <summary>One record batch: row r's tokens are values[offsets[r] .. offsets[r + 1]] of both columns.</summary>
    readonly struct Segment(int firstRow, int rows, int* idOffsets, int* ids, int* labelOffsets, int* labels)
    {
        public readonly int FirstRow = firstRow, Rows = rows;
        public readonly int* IdOffsets = idOffsets, Ids = ids, LabelOffsets = labelOffsets, Labels = labels;
    }

    readonly MappedFile[] _files;
    readonly Segment[] _segments;
    long _trainable = -1;
    bool _disposed;

    public int Count { get; }
    public long TotalTokens { get; }

    MappedExamples(MappedFile[] files, Segment[] segments)
    {
        _files = files;
        _segments = segments;
        Count = segments.Sum(s => s.Rows);
        TotalTokens = segments.Sum(s => (long)(s.IdOffsets[s.Rows] - s.IdOffsets[0]));
    }

    /// <summary>Maps the files (in order) and checks their structure; a file that is not a well-formed cache throws InvalidDataException.</summary>
    public static MappedExamples Open(IEnumerable<string> paths)
    {
        var files = new List<MappedFile>();
        try
        {
            var segments = new List<Segment>();
            int firstRow = 0;
            foreach (var path in paths)
            {
                var file = new MappedFile(path);
                files.Add(file);
                foreach (var s in file.Segments(firstRow))
                {
                    segments.Add(s);
                    firstRow = checked(firstRow + s.Rows);
                }
            }
            return new MappedExamples([.. files], [.. segments]);
        }
        catch
        {
            foreach (var f in files) ((IDisposable)f).Dispose();
            throw;
        }
    }

    public Example this[int index]
    {
        get
        {
            var (s, r) = Locate(index);
            int from = s.IdOffsets[r], to = s.IdOffsets[r + 1];
            var example = new Example(new ReadOnlySpan<int>(s.Ids + from, to - from).ToArray(), new ReadOnlySpan<int>(s.Labels + from, to - from).ToArray());
            GC.KeepAlive(this); // the mapping must outlive the copy
            return example;
        }
    }

    /// <summary>A row's token count without copying it (packing sorts by length).</summary>
    public int LengthOf(int index)
    {
        var (s, r) = Locate(index);
        int length = s.IdOffsets[r + 1] - s.IdOffsets[r];
        GC.KeepAlive(this);
        return length;
    }

    /// <summary>Labels that are not -100, over all rows: one vectorised pass over the mapped labels, then remembered.</summary>
    public long TrainableTokens
    {
        get
        {
            if (_trainable >= 0) return _trainable;
            ObjectDisposedException.ThrowIf(_disposed, this);
            long ignored = 0;
            foreach (var s in _segments)
            {
                int from = s.LabelOffsets[0], to = s.LabelOffsets[s.Rows];
                ignored += new ReadOnlySpan<int>(s.Labels + from, to - from).Count(Example.IgnoreIndex);
            }
            GC.KeepAlive(this);
            return _trainable = TotalTokens - ignored;
        }
    }

    /// <summary>The largest token id over all rows: one pass over the mapped ids, no row copied.</summary>
    public int MaxTokenId()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int max = int.MinValue;
        foreach (var s in _segments)
        {
            int from = s.IdOffsets[0], to = s.IdOffsets[s.Rows];
            foreach (int id in new ReadOnlySpan<int>(s.Ids + from, to - from)) if (id > max) max = id;
        }
        GC.KeepAlive(this);
        return max;
    }

    (Segment Segment, int Row) Locate(int index)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, Count);
        int lo = 0, hi = _segments.Length - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (_segments[mid].FirstRow <= index) lo = mid; else hi = mid - 1;
        }
        return (_segments[lo], index - _segments[lo].FirstRow);
    }

    public IEnumerator<Example> GetEnumerator()
    {
        for (int i = 0; i < Count; i++) yield return this[i];
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var f in _files) ((IDisposable)f).Dispose();
    }

    /// <summary>
    /// A read-only mapping of a whole file, exposed as <see cref="Memory{T}"/> so that Apache.Arrow's reader slices
    /// its buffers out of the mapping instead of copying them (its stream reader over memory does no copying).
    /// </summary>
    sealed class MappedFile : MemoryManager<byte>
    {
        readonly string _path;
        readonly MemoryMappedFile _map;
        readonly MemoryMappedViewAccessor _view;
        readonly byte* _base;
        readonly int _length;
        bool _acquired, _released;

        public MappedFile(string path)
        {
            _path = path;
            long length = new FileInfo(path).Length;
            // The stream's end-of-stream marker alone is 8 bytes; an empty file cannot even be mapped.
            if (length < 8) throw new InvalidDataException($"{Path.GetFileName(path)} is truncated ({length} bytes)");
            if (length > int.MaxValue) throw new InvalidDataException($"{Path.GetFileName(path)} is over 2 GiB; the cache writes smaller files");
            _length = (int)length;
            _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, mapName: null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* pointer = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
            _acquired = true;
            _base = pointer + _view.PointerOffset;
        }

        /// <summary>Each record batch's columns as pointers into the mapping, after checking that they describe valid rows.</summary>
        public IEnumerable<Segment> Segments(int firstRow)
        {
            // Arrow's end-of-stream marker: a continuation token and a zero length. A file cut short lacks it.
            if (*(long*)(_base + _length - 8) != unchecked((long)0x00000000_FFFFFFFF))
                throw new InvalidDataException($"{Path.GetFileName(_path)} does not end with Arrow's end-of-stream marker (truncated)");
            var segments = new List<Segment>();
            using var reader = new ArrowStreamReader(Memory);
            int ids = reader.Schema.GetFieldIndex("input_ids"), labels = reader.Schema.GetFieldIndex("labels");
            if (ids < 0 || labels < 0) throw new InvalidDataException($"{Path.GetFileName(_path)} has no input_ids or labels column");
            while (reader.ReadNextRecordBatch() is { } batch)
            {
                int* idOffsets = Column(batch, ids, "input_ids", out var idValues);
                int* labelOffsets = Column(batch, labels, "labels", out var labelValues);
                int rows = batch.Length;
                if (!new ReadOnlySpan<int>(idOffsets, rows + 1).SequenceEqual(new ReadOnlySpan<int>(labelOffsets, rows + 1)))
                    throw new InvalidDataException($"{Path.GetFileName(_path)}: input_ids and labels differ in length");
                segments.Add(new Segment(firstRow, rows, idOffsets, idValues, labelOffsets, labelValues));
                firstRow = checked(firstRow + rows);
            }
            return segments;
        }

        /// <summary>A list&lt;int32&gt; column without nulls whose offsets rise within its values.</summary>
        int* Column(RecordBatch batch, int at, string name, out int* valuesAt)
        {
            if (batch.Column(at) is not ListArray { NullCount: 0, Offset: 0 } list || list.Values is not Int32Array { NullCount: 0, Offset: 0 } values)
                throw new InvalidDataException($"{Path.GetFileName(_path)}: {name} is not a list<int32> column without nulls");
            var offsets = list.ValueOffsetsBuffer.Span;
            if (offsets.Length < (batch.Length + 1) * sizeof(int)) throw new InvalidDataException($"{Path.GetFileName(_path)}: {name} has too few offsets");
            int* o = (int*)Pointer(offsets);
            int previous = o[0];
            if (previous < 0) throw new InvalidDataException($"{Path.GetFileName(_path)}: {name} offsets start below 0");
            for (int r = 1; r <= batch.Length; r++)
            {
                if (o[r] < previous) throw new InvalidDataException($"{Path.GetFileName(_path)}: {name} offsets decrease at row {r}");
                previous = o[r];
            }
            if (previous > values.Length || (long)previous * sizeof(int) > values.ValueBuffer.Length)
                throw new InvalidDataException($"{Path.GetFileName(_path)}: {name} offsets run past its values");
            valuesAt = (int*)Pointer(values.ValueBuffer.Span);
            return o;
        }

        /// <summary>Where a buffer the reader sliced out of <see cref="Memory"/> lies in the mapping (null when empty).</summary>
        byte* Pointer(ReadOnlySpan<byte> span)
        {
            fixed (byte* p = span)
            {
                if (span.Length > 0 && (p < _base || p + span.Length > _base + _length))
                    throw new InvalidOperationException("Apache.Arrow copied a buffer instead of slicing the mapping");
                return p;
            }
        }

        public override Span<byte> GetSpan()
        {
            ObjectDisposedException.ThrowIf(_released, this);
            return new Span<byte>(_base, _length);
        }

        public override MemoryHandle Pin(int elementIndex = 0) => new(_base + elementIndex);
        public override void Unpin() { }

        protected override void Dispose(bool disposing)
        {
            // A constructor that threw (a file too short to map) leaves a finalizable object with nothing mapped.
            if (_released || !_acquired) return;
            _released = true;
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            if (!disposing) return;
            _view.Dispose();
            _map.Dispose();
        }

        // AcquirePointer holds a reference on the view's handle: without this, a mapping never disposed would stay mapped.
        ~MappedFile() => Dispose(false);
    }
}
