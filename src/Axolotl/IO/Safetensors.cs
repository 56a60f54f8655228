using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.IO;

/// <summary>One tensor's entry in a safetensors header.</summary>
public sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reads a .safetensors file: the header is parsed and validated up front, tensors are read only when asked for.
/// Format: u64 little-endian header length, a JSON header, then the raw data that header offsets point into.
/// </summary>
public sealed class SafetensorsFile
{
    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    readonly long _dataStart;

    SafetensorsFile(string path, Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata, long dataStart)
    {
        Path = path; Entries = entries; Metadata = metadata; _dataStart = dataStart;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new UserError($"{path}: file not found.");
        using var stream = File.OpenRead(path);
        long fileLength = stream.Length;
        if (fileLength < 8) throw new UserError($"{path}: not a safetensors file (shorter than its 8-byte header length).");
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BitConverter.ToUInt64(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8) || headerLength > 100_000_000)
            throw new UserError($"{path}: header length {headerLength} is larger than the file ({fileLength} bytes); the file is truncated or not safetensors.");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        JsonObject header;
        try
        {
            header = JsonNode.Parse(Encoding.UTF8.GetString(headerBytes).TrimEnd(' ', '\0'), documentOptions: JsonFiles.NoDuplicateKeys) as JsonObject
                     ?? throw new UserError($"{path}: the safetensors header is not a JSON object.");
        }
        catch (JsonException e) { throw new UserError($"{path}: the safetensors header is not valid JSON ({e.Message})."); }

        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;
        var entries = new Dictionary<string, SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                if (node is JsonObject meta)
                    foreach (var (k, v) in meta) metadata[k] = v?.ToString() ?? "";
                continue;
            }
            entries[name] = ParseEntry(path, name, node, dataLength);
        }
        long previousEnd = 0;
        string? previousName = null;
        foreach (var e in entries.Values.OrderBy(e => e.Begin))
        {
            if (e.Begin < previousEnd)
                throw new UserError($"{path}: tensor '{e.Name}' overlaps tensor '{previousName}' (data_offsets {e.Begin}..{e.End}).");
            previousEnd = e.End; previousName = e.Name;
        }
        return new SafetensorsFile(path, entries, metadata, dataStart);
    }

    static SafetensorsEntry ParseEntry(string path, string name, JsonNode? node, long dataLength)
    {
        try
        {
            var obj = node as JsonObject ?? throw new UserError($"{path}: header entry '{name}' is not an object.");
            var dtype = obj["dtype"]?.GetValue<string>() ?? throw new UserError($"{path}: tensor '{name}' has no dtype.");
            var shape = (obj["shape"] as JsonArray ?? throw new UserError($"{path}: tensor '{name}' has no shape."))
                .Select(x => x?.GetValue<long>() ?? throw new UserError($"{path}: tensor '{name}' has a null in its shape.")).ToArray();
            var offsets = obj["data_offsets"] as JsonArray ?? throw new UserError($"{path}: tensor '{name}' has no data_offsets.");
            if (offsets.Count != 2) throw new UserError($"{path}: tensor '{name}' data_offsets must have two numbers.");
            long begin = offsets[0]?.GetValue<long>() ?? -1, end = offsets[1]?.GetValue<long>() ?? -1;
            int elementSize = ElementSize(dtype) ?? throw new UserError(
                $"{path}: tensor '{name}' has dtype {dtype}, which is not supported (F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL are).");
            if (shape.Any(d => d < 0)) throw new UserError($"{path}: tensor '{name}' has a negative dimension.");
            long numel = shape.Aggregate(1L, (a, b) => checked(a * b));
            if (begin < 0 || end < begin || end > dataLength)
                throw new UserError($"{path}: tensor '{name}' data_offsets {begin}..{end} fall outside the data section ({dataLength} bytes); the file is truncated or corrupt.");
            if (end - begin != numel * elementSize)
                throw new UserError($"{path}: tensor '{name}' has {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {numel * elementSize}.");
            return new SafetensorsEntry(name, dtype, shape, begin, end);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException or JsonException)
        {
            throw new UserError($"{path}: header entry '{name}' is malformed ({e.Message}).");
        }
    }

    static int? ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" => 8,
        "F32" or "I32" => 4,
        "BF16" or "F16" or "I16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => null,
    };

    internal static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64, "F32" => ScalarType.Float32, "BF16" => ScalarType.BFloat16, "F16" => ScalarType.Float16,
        "I64" => ScalarType.Int64, "I32" => ScalarType.Int32, "I16" => ScalarType.Int16, "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte, "BOOL" => ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    internal static string FromScalarType(ScalarType type) => type switch
    {
        ScalarType.Float64 => "F64", ScalarType.Float32 => "F32", ScalarType.BFloat16 => "BF16", ScalarType.Float16 => "F16",
        ScalarType.Int64 => "I64", ScalarType.Int32 => "I32", ScalarType.Int16 => "I16", ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8", ScalarType.Bool => "BOOL",
        _ => throw new NotSupportedException($"safetensors cannot store {type}"),
    };

    /// <summary>Reads one tensor into a new CPU tensor of the stored dtype.</summary>
    public Tensor Read(string name)
    {
        if (!Entries.TryGetValue(name, out var entry)) throw new UserError($"{Path}: no tensor named '{name}'.");
        var bytes = new byte[entry.End - entry.Begin];
        using (var stream = File.OpenRead(Path))
        {
            stream.Position = _dataStart + entry.Begin;
            stream.ReadExactly(bytes);
        }
        var tensor = empty(entry.Shape, ToScalarType(entry.DType));
        if (bytes.Length > 0) tensor.bytes = bytes;
        return tensor;
    }

    /// <summary>Writes tensors (contiguous CPU copies are taken) with optional metadata, atomically.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata != null)
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        var blobs = new List<byte[]>();
        long offset = 0;
        foreach (var (name, tensor) in tensors.OrderBy(t => t.Key, StringComparer.Ordinal))
        {
            using var contiguous = tensor.detach().cpu().contiguous();
            var data = contiguous.bytes.ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = FromScalarType(contiguous.dtype),
                ["shape"] = new JsonArray(contiguous.shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + data.Length),
            };
            offset += data.Length;
            blobs.Add(data);
        }
        var headerText = header.ToJsonString();
        // The spec pads the header with spaces to an 8-byte boundary so the data stays aligned.
        int padding = (8 - Encoding.UTF8.GetByteCount(headerText) % 8) % 8;
        var headerBytes = Encoding.UTF8.GetBytes(headerText + new string(' ', padding));
        AtomicFile.Write(path, stream =>
        {
            stream.Write(BitConverter.GetBytes((ulong)headerBytes.Length));
            stream.Write(headerBytes);
            foreach (var blob in blobs) stream.Write(blob);
        });
    }
}
