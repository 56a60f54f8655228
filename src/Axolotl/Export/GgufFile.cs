using System.IO.MemoryMappedFiles;
using System.Text;

namespace Axolotl.Export;

/// <summary>GGUF's metadata value types (gguf.h's gguf_type).</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>One metadata value: a scalar, a string or a typed array (the element type says how it is written).</summary>
internal sealed record GgufValue(GgufValueType Type, object Value, GgufValueType ElementType = GgufValueType.UInt8)
{
    public static GgufValue Of(string s) => new(GgufValueType.String, s);
    public static GgufValue Of(uint v) => new(GgufValueType.UInt32, v);
    public static GgufValue Of(int v) => new(GgufValueType.Int32, v);
    public static GgufValue Of(float v) => new(GgufValueType.Float32, v);
    public static GgufValue Of(bool v) => new(GgufValueType.Bool, v);
    public static GgufValue Strings(IReadOnlyList<string> v) => new(GgufValueType.Array, v, GgufValueType.String);
    public static GgufValue Floats(IReadOnlyList<float> v) => new(GgufValueType.Array, v, GgufValueType.Float32);
    public static GgufValue Ints(IReadOnlyList<int> v) => new(GgufValueType.Array, v, GgufValueType.Int32);

    public uint AsUInt(string key) => Value switch
    {
        uint u => u, int i when i >= 0 => (uint)i, ulong l => (uint)l, long l when l >= 0 => (uint)l, ushort s => s, byte b => b,
        _ => throw new UserError($"GGUF metadata '{key}' is a {Type}, not an unsigned integer."),
    };
    public double AsDouble(string key) => Value switch
    {
        float f => f, double d => d, _ => throw new UserError($"GGUF metadata '{key}' is a {Type}, not a number."),
    };
}

/// <summary>A tensor's entry in the header: name, ggml dims (ne: fastest-varying first, the reverse of torch's shape), type.</summary>
internal sealed record GgufTensorInfo(string Name, long[] Dims, GgmlType Type)
{
    public long Elements => Dims.Aggregate(1L, (a, b) => a * b);
    public long ByteSize => GgmlQuants.ByteSize(Type, Elements);
    /// <summary>The torch shape: dims reversed.</summary>
    public long[] Shape => Dims.Reverse().ToArray();
    /// <summary>Offset of the data from the start of the data section (set when read).</summary>
    public long Offset { get; init; }
}

/// <summary>
/// GGUF version 3, as gguf.h lays it out: "GGUF", version, tensor and metadata counts, the metadata (key, type,
/// value), the tensor infos (name, dims, type, offset), then each tensor's data at an offset aligned to
/// general.alignment (32 unless the file says otherwise). All little-endian; strings are a u64 length and UTF-8 bytes.
/// </summary>
internal static class GgufFormat
{
    public const uint Magic = 0x46554747; // "GGUF"
    public const uint Version = 3;
    public const int DefaultAlignment = 32;

    public static long Align(long offset, int alignment) => (offset + alignment - 1) / alignment * alignment;
}

/// <summary>
/// Writes a GGUF file in one pass: the header (metadata and every tensor's name, dims, type and offset, all known
/// up front from shapes), then the tensors one at a time as <c>produce</c> hands them over, so only one converted
/// tensor is in memory beside the model.
/// </summary>
internal sealed class GgufWriter
{
    readonly List<(string Key, GgufValue Value)> _metadata = [];
    readonly List<GgufTensorInfo> _tensors = [];

    public void Add(string key, GgufValue value)
    {
        _metadata.RemoveAll(m => m.Key == key);
        _metadata.Add((key, value));
    }

    public void AddTensor(GgufTensorInfo info) => _tensors.Add(info);

    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;

    /// <summary>Writes the file to <paramref name="stream"/>; <paramref name="produce"/> writes each tensor's bytes (exactly ByteSize of them).</summary>
    public void Write(Stream stream, Action<GgufTensorInfo, Stream> produce, Action<int>? progress = null)
    {
        var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write(GgufFormat.Magic);
        w.Write(GgufFormat.Version);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            WriteString(w, key);
            w.Write((uint)value.Type);
            WriteValue(w, value);
        }
        long offset = 0;
        foreach (var t in _tensors)
        {
            WriteString(w, t.Name);
            w.Write((uint)t.Dims.Length);
            foreach (var d in t.Dims) w.Write((ulong)d);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offset = GgufFormat.Align(offset + t.ByteSize, GgufFormat.DefaultAlignment);
        }
        w.Flush();
        Pad(stream);
        long dataStart = stream.Position;
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            long before = stream.Position;
            produce(t, stream);
            if (stream.Position - before != t.ByteSize)
                throw new InvalidOperationException($"GGUF tensor {t.Name}: wrote {stream.Position - before} bytes, expected {t.ByteSize}");
            Pad(stream);
            progress?.Invoke(i + 1);
        }
        _ = dataStart;
    }

    static void Pad(Stream stream)
    {
        long padding = GgufFormat.Align(stream.Position, GgufFormat.DefaultAlignment) - stream.Position;
        for (long i = 0; i < padding; i++) stream.WriteByte(0);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, GgufValue value)
    {
        switch (value.Type)
        {
            case GgufValueType.String: WriteString(w, (string)value.Value); break;
            case GgufValueType.UInt32: w.Write((uint)value.Value); break;
            case GgufValueType.Int32: w.Write((int)value.Value); break;
            case GgufValueType.Float32: w.Write((float)value.Value); break;
            case GgufValueType.Bool: w.Write((bool)value.Value ? (byte)1 : (byte)0); break;
            case GgufValueType.Array:
                w.Write((uint)value.ElementType);
                switch (value.ElementType)
                {
                    case GgufValueType.String:
                        var strings = (IReadOnlyList<string>)value.Value;
                        w.Write((ulong)strings.Count);
                        foreach (var s in strings) WriteString(w, s);
                        break;
                    case GgufValueType.Float32:
                        var floats = (IReadOnlyList<float>)value.Value;
                        w.Write((ulong)floats.Count);
                        foreach (var f in floats) w.Write(f);
                        break;
                    case GgufValueType.Int32:
                        var ints = (IReadOnlyList<int>)value.Value;
                        w.Write((ulong)ints.Count);
                        foreach (var i in ints) w.Write(i);
                        break;
                    default: throw new ArgumentException($"array of {value.ElementType}");
                }
                break;
            default: throw new ArgumentException($"value type {value.Type}");
        }
    }
}

/// <summary>
/// A GGUF file opened for reading: the metadata and tensor infos parsed, the data memory-mapped and read per tensor.
/// Malformed files are one-sentence errors naming the file.
/// </summary>
internal sealed class GgufReader : IDisposable
{
    public string Path { get; }
    public uint Version { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    public IReadOnlyDictionary<string, GgufTensorInfo> Tensors { get; }
    readonly MemoryMappedFile _map;
    readonly long _dataStart;

    public GgufReader(string path)
    {
        Path = path;
        long length = new FileInfo(path).Length;
        using (var stream = File.OpenRead(path))
        using (var r = new BinaryReader(stream, Encoding.UTF8))
        {
            try
            {
                if (length < 24 || r.ReadUInt32() != GgufFormat.Magic) throw new UserError($"{path}: not a GGUF file (no 'GGUF' magic).");
                Version = r.ReadUInt32();
                if (Version is not (2 or 3)) throw new UserError($"{path}: GGUF version {Version} is not supported (2 and 3 are).");
                ulong tensorCount = r.ReadUInt64(), kvCount = r.ReadUInt64();
                if (tensorCount > 1_000_000 || kvCount > 1_000_000) throw new UserError($"{path}: implausible GGUF header ({tensorCount} tensors, {kvCount} metadata keys).");
                var metadata = new Dictionary<string, GgufValue>();
                for (ulong i = 0; i < kvCount; i++)
                {
                    var key = ReadString(r, length);
                    var type = (GgufValueType)r.ReadUInt32();
                    metadata[key] = ReadValue(r, type, length);
                }
                int alignment = metadata.TryGetValue("general.alignment", out var a) ? (int)a.AsUInt("general.alignment") : GgufFormat.DefaultAlignment;
                var tensors = new Dictionary<string, GgufTensorInfo>();
                for (ulong i = 0; i < tensorCount; i++)
                {
                    var name = ReadString(r, length);
                    uint dimsCount = r.ReadUInt32();
                    if (dimsCount is 0 or > 4) throw new UserError($"{path}: tensor '{name}' has {dimsCount} dimensions.");
                    var dims = new long[dimsCount];
                    for (int d = 0; d < dimsCount; d++) dims[d] = (long)r.ReadUInt64();
                    var type = (GgmlType)r.ReadUInt32();
                    long offset = (long)r.ReadUInt64();
                    tensors[name] = new GgufTensorInfo(name, dims, type) { Offset = offset };
                }
                _dataStart = GgufFormat.Align(stream.Position, alignment);
                foreach (var t in tensors.Values)
                    if (Enum.IsDefined(t.Type) && (t.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 || GgmlQuants.IsBlockType(t.Type))
                        && _dataStart + t.Offset + t.ByteSize > length)
                        throw new UserError($"{path}: tensor '{t.Name}' runs past the end of the file (truncated?).");
                Metadata = metadata;
                Tensors = tensors;
            }
            catch (EndOfStreamException) { throw new UserError($"{path}: the GGUF header is truncated."); }
        }
        _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
    }

    public string? GetString(string key) => Metadata.TryGetValue(key, out var v) && v.Value is string s ? s : null;

    /// <summary>A tensor's values as fp32 (dequantized for Q8_0 and Q4_0), flat in ggml order (= torch row-major of <see cref="GgufTensorInfo.Shape"/>).</summary>
    public float[] ReadFloats(GgufTensorInfo t)
    {
        if (t.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) && !GgmlQuants.IsBlockType(t.Type))
            throw new UserError($"{Path}: tensor '{t.Name}' is stored as {(Enum.IsDefined(t.Type) ? t.Type.ToString() : $"ggml type {(uint)t.Type}")}, which cannot be read back yet (F32, F16, BF16, Q8_0 and Q4_0 can).");
        var bytes = new byte[t.ByteSize];
        using (var view = _map.CreateViewStream(_dataStart + t.Offset, t.ByteSize, MemoryMappedFileAccess.Read))
            view.ReadExactly(bytes);
        var result = new float[t.Elements];
        switch (t.Type)
        {
            case GgmlType.F32: Buffer.BlockCopy(bytes, 0, result, 0, bytes.Length); break;
            case GgmlType.F16:
                for (long i = 0; i < result.Length; i++) result[i] = (float)BitConverter.ToHalf(bytes, (int)(i * 2));
                break;
            case GgmlType.BF16:
                for (long i = 0; i < result.Length; i++) result[i] = BitConverter.Int32BitsToSingle(BitConverter.ToUInt16(bytes, (int)(i * 2)) << 16);
                break;
            default: GgmlQuants.Dequantize(t.Type, bytes, result); break;
        }
        return result;
    }

    string ReadString(BinaryReader r, long length)
    {
        ulong n = r.ReadUInt64();
        if (n > (ulong)length) throw new UserError($"{Path}: a string in the GGUF header claims {n} bytes (corrupt file?).");
        return Encoding.UTF8.GetString(r.ReadBytes((int)n));
    }

    GgufValue ReadValue(BinaryReader r, GgufValueType type, long length) => type switch
    {
        GgufValueType.UInt8 => new(type, r.ReadByte()),
        GgufValueType.Int8 => new(type, r.ReadSByte()),
        GgufValueType.UInt16 => new(type, r.ReadUInt16()),
        GgufValueType.Int16 => new(type, r.ReadInt16()),
        GgufValueType.UInt32 => new(type, r.ReadUInt32()),
        GgufValueType.Int32 => new(type, r.ReadInt32()),
        GgufValueType.Float32 => new(type, r.ReadSingle()),
        GgufValueType.Bool => new(type, r.ReadByte() != 0),
        GgufValueType.String => new(type, ReadString(r, length)),
        GgufValueType.UInt64 => new(type, r.ReadUInt64()),
        GgufValueType.Int64 => new(type, r.ReadInt64()),
        GgufValueType.Float64 => new(type, r.ReadDouble()),
        GgufValueType.Array => ReadArray(r, length),
        _ => throw new UserError($"{Path}: unknown GGUF metadata type {(uint)type}."),
    };

    GgufValue ReadArray(BinaryReader r, long length)
    {
        var element = (GgufValueType)r.ReadUInt32();
        ulong n = r.ReadUInt64();
        if (n > (ulong)length) throw new UserError($"{Path}: an array in the GGUF header claims {n} elements (corrupt file?).");
        switch (element)
        {
            case GgufValueType.String:
                var strings = new string[n];
                for (ulong i = 0; i < n; i++) strings[i] = ReadString(r, length);
                return new(GgufValueType.Array, strings, element);
            case GgufValueType.Float32:
                var floats = new float[n];
                for (ulong i = 0; i < n; i++) floats[i] = r.ReadSingle();
                return new(GgufValueType.Array, floats, element);
            case GgufValueType.Int32:
                var ints = new int[n];
                for (ulong i = 0; i < n; i++) ints[i] = r.ReadInt32();
                return new(GgufValueType.Array, ints, element);
            default:
                var values = new object[n];
                for (ulong i = 0; i < n; i++) values[i] = ReadValue(r, element, length).Value;
                return new(GgufValueType.Array, values, element);
        }
    }

    public void Dispose() => _map.Dispose();
}
