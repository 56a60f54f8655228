using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.IO;

/// <summary>One tensor's entry in a safetensors header.</summary>
internal sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reads a .safetensors file: the header is parsed and validated up front, tensors are read only when asked for.
/// Format: u64 little-endian header length, a JSON header, then the raw data that header offsets point into.
/// </summary>
internal sealed class SafetensorsFile
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

    internal static int? ElementSize(string dtype) => dtype switch
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

    /// <summary>Reads one tensor into a new CPU tensor of the stored dtype (see <see cref="ReadInto"/>).</summary>
    public Tensor Read(string name)
    {
        if (!Entries.TryGetValue(name, out var entry)) throw new UserError($"{Path}: no tensor named '{name}'.");
        var tensor = empty(entry.Shape, ToScalarType(entry.DType), device: CPU);
        ReadInto(name, tensor);
        return tensor;
    }

    /// <summary>
    /// Reads one tensor's bytes straight into <paramref name="destination"/> (contiguous, on the CPU, of the stored dtype
    /// and shape), with positioned reads: a memory map would count the file's pages in the process's RSS while it is
    /// mapped, and a model loads tensor by tensor without the whole file passing through managed memory.
    /// </summary>
    public void ReadInto(string name, Tensor destination)
    {
        if (!Entries.TryGetValue(name, out var entry)) throw new UserError($"{Path}: no tensor named '{name}'.");
        if (destination.dtype != ToScalarType(entry.DType) || !destination.shape.SequenceEqual(entry.Shape) || !destination.is_contiguous()
            || destination.device_type != DeviceType.CPU)
            throw new ArgumentException($"{name} cannot be read into a {destination.dtype} [{string.Join(", ", destination.shape)}] tensor.");
        long length = entry.End - entry.Begin;
        if (length == 0) return;
        // Through a stream, not FileInfo: Hub cache snapshots are symlinks, and FileInfo measures the link itself.
        using var file = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.RandomAccess);
        if (file.Length < _dataStart + entry.End)
            throw new UserError($"{Path}: the file shrank since it was opened; tensor '{name}' lies past its end.");
        foreach (var (part, start, bytes) in Pieces(destination))
            using (part)
            {
                var span = part.bytes;
                for (int done = 0; done < bytes;)
                {
                    int read = RandomAccess.Read(file.SafeFileHandle, span[done..], _dataStart + entry.Begin + start + done);
                    if (read <= 0) throw new UserError($"{Path}: the file ended inside tensor '{name}'.");
                    done += read;
                }
            }
    }

    /// <summary>
    /// A contiguous tensor's memory in views of at most 1 GiB (byte offset and length each), since a span cannot cover
    /// more than 2 GiB and a large embedding can.
    /// </summary>
    static IEnumerable<(Tensor Part, long Start, int Bytes)> Pieces(Tensor contiguous)
    {
        long element = contiguous.ElementSize, count = contiguous.numel();
        long perPiece = Math.Max(1, (1L << 30) / element);
        using var flat = contiguous.view(-1);
        for (long start = 0; start < count; start += perPiece)
        {
            long n = Math.Min(perPiece, count - start);
            yield return (flat.narrow(0, start, n), start * element, (int)(n * element));
        }
    }

    /// <summary>
    /// Writes tensors with optional metadata, atomically, in key order; with <paramref name="storeAs"/>, each is converted
    /// to that dtype as it is written (one tensor's copy at a time, not the whole model's).
    /// </summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        ScalarType? storeAs = null)
    {
        var header = new JsonObject();
        if (metadata != null)
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        var ordered = tensors.OrderBy(t => t.Key, StringComparer.Ordinal).ToList();
        long offset = 0;
        foreach (var (name, tensor) in ordered)
        {
            var type = storeAs ?? tensor.dtype;
            long bytes = tensor.numel() * ElementSize(FromScalarType(type))!.Value;
            header[name] = new JsonObject
            {
                ["dtype"] = FromScalarType(type),
                ["shape"] = new JsonArray(tensor.shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        var headerText = header.ToJsonString();
        // The spec pads the header with spaces to an 8-byte boundary so the data stays aligned.
        int padding = (8 - Encoding.UTF8.GetByteCount(headerText) % 8) % 8;
        var headerBytes = Encoding.UTF8.GetBytes(headerText + new string(' ', padding));
        AtomicFile.Write(path, stream =>
        {
            stream.Write(BitConverter.GetBytes((ulong)headerBytes.Length));
            stream.Write(headerBytes);
            foreach (var (_, tensor) in ordered)
            {
                using var scope = NewDisposeScope();
                var contiguous = tensor.detach().cpu().to(storeAs ?? tensor.dtype).contiguous();
                WriteData(stream, contiguous);
            }
        });
    }

    static void WriteData(Stream stream, Tensor contiguous)
    {
        foreach (var (part, _, _) in Pieces(contiguous))
            using (part) stream.Write(part.bytes);
    }
}

/// <summary>
/// A model's weights as Hugging Face lays them out: model.safetensors, or shards model-0000i-of-0000N.safetensors with
/// model.safetensors.index.json mapping each tensor to its shard (transformers' save_pretrained / from_pretrained).
/// </summary>
internal static class ShardedSafetensors
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";
    /// <summary>transformers' default max_shard_size, "5GB".</summary>
    public const long DefaultMaxShardBytes = 5_000_000_000;

    /// <summary>
    /// transformers' convert_file_size_to_int: a byte count, or a whole number with KB/MB/GB (powers of 1000),
    /// KiB/MiB/GiB (powers of 1024); a lowercase final b (e.g. "5Gb") means bits.
    /// </summary>
    public static long ParseSize(string text, string what)
    {
        var t = text.Trim();
        if (long.TryParse(t, out var plain) && plain > 0) return plain;
        var units = new (string Suffix, long Scale)[] { ("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000) };
        foreach (var (suffix, scale) in units)
        {
            if (!t.ToUpperInvariant().EndsWith(suffix)) continue;
            if (!long.TryParse(t[..^suffix.Length], out var n) || n <= 0) break;
            long bytes = checked(n * scale);
            return !suffix.Contains('I') && t.EndsWith('b') ? bytes / 8 : bytes;
        }
        throw new UserError($"{what}: '{text}' is not a size; use a whole number followed by a unit, e.g. '5GB' or '500MB'.");
    }

    /// <summary>The weight files of a model folder: model.safetensors, or the shards its index names (checked to exist).</summary>
    public static IReadOnlyList<string> WeightFiles(string modelDir)
    {
        var single = Path.Combine(modelDir, SingleFile);
        if (File.Exists(single)) return [single];
        if (ReadLayout(modelDir) is { } layout)
            return layout.Values.Distinct().Select(f => Path.Combine(modelDir, f)).ToList();
        if (File.Exists(Path.Combine(modelDir, "pytorch_model.bin")) || File.Exists(Path.Combine(modelDir, "pytorch_model.bin.index.json")))
            throw new UserError($"{modelDir}: only pytorch_model.bin found; convert it to safetensors (pickle files are not loaded).");
        throw new UserError($"{modelDir}: no {SingleFile} or {IndexFile}.");
    }

    /// <summary>The shard layout a save should keep to: the base's weight_map when its weights are sharded, else null.</summary>
    public static IReadOnlyDictionary<string, string>? LayoutOf(string modelDir) =>
        File.Exists(Path.Combine(modelDir, SingleFile)) ? null : ReadLayout(modelDir);

    /// <summary>The index's weight_map (tensor → shard file name), or null when the folder has no index.</summary>
    public static IReadOnlyDictionary<string, string>? ReadLayout(string modelDir)
    {
        var index = Path.Combine(modelDir, IndexFile);
        if (!File.Exists(index)) return null;
        var map = JsonFiles.ReadObject(index)["weight_map"] as JsonObject ?? throw new UserError($"{index}: no weight_map.");
        var layout = new Dictionary<string, string>();
        foreach (var (key, value) in map)
        {
            string file;
            try { file = value!.GetValue<string>(); }
            catch (Exception e) when (e is InvalidOperationException or NullReferenceException) { throw new UserError($"{index}: weight_map['{key}'] must be a file name."); }
            if (file.Contains('/') || file.Contains('\\') || file.StartsWith('.'))
                throw new UserError($"{index}: weight_map['{key}'] = '{file}' must be a file name inside the model folder.");
            if (!File.Exists(Path.Combine(modelDir, file)))
                throw new UserError($"{index}: tensor '{key}' is mapped to '{file}', which does not exist.");
            layout[key] = file;
        }
        return layout;
    }

    /// <summary>
    /// huggingface_hub's split of a state dict into shards: in order, a tensor starts a new shard when it would push the
    /// current one past the limit; a tensor larger than the limit gets a shard of its own.
    /// </summary>
    public static List<List<string>> Split(IReadOnlyList<(string Key, long Bytes)> tensors, long maxShardBytes)
    {
        var shards = new List<List<string>>();
        var current = new List<string>();
        long size = 0;
        foreach (var (key, bytes) in tensors)
        {
            if (bytes > maxShardBytes) { shards.Add([key]); continue; }
            if (size + bytes > maxShardBytes && current.Count > 0) { shards.Add(current); current = []; size = 0; }
            current.Add(key);
            size += bytes;
        }
        if (current.Count > 0) shards.Add(current);
        return shards;
    }

    /// <summary>
    /// Saves tensors into <paramref name="dir"/> as one file or shards plus index: along <paramref name="layout"/> (a base
    /// model's weight_map, so a fine-tune or merge keeps its shard files) when given, else split at max shard size.
    /// Each file is written atomically, the index last; weight files of an earlier save that are no longer part of
    /// the model are removed, so a loader never mixes old and new.
    /// </summary>
    public static void Save(string dir, IReadOnlyList<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        ScalarType? storeAs = null, long maxShardBytes = DefaultMaxShardBytes, IReadOnlyDictionary<string, string>? layout = null)
    {
        Directory.CreateDirectory(dir);
        long Bytes(Tensor t) => t.numel() * SafetensorsFile.ElementSize(SafetensorsFile.FromScalarType(storeAs ?? t.dtype))!.Value;
        List<(string File, List<string> Keys)> files;
        if (layout is not null)
        {
            // Keys the base did not have (none, for the same architecture) join its first shard.
            var first = layout.Values.Order(StringComparer.Ordinal).First();
            files = tensors.GroupBy(t => layout.GetValueOrDefault(t.Key, first))
                .OrderBy(g => g.Key, StringComparer.Ordinal)
                .Select(g => (g.Key, g.Select(t => t.Key).ToList())).ToList();
        }
        else
        {
            var split = Split(tensors.Select(t => (t.Key, Bytes(t.Value))).ToList(), maxShardBytes);
            files = split.Count == 1
                ? [(SingleFile, split[0])]
                : split.Select((keys, i) => ($"model-{i + 1:00000}-of-{split.Count:00000}.safetensors", keys)).ToList();
        }
        var stale = ExistingWeightFiles(dir).Except(files.Select(f => f.File)).ToList();
        var byKey = tensors.ToDictionary(t => t.Key, t => t.Value);
        foreach (var (file, keys) in files)
            SafetensorsFile.Write(Path.Combine(dir, file), keys.Select(k => new KeyValuePair<string, Tensor>(k, byKey[k])), metadata, storeAs);
        bool sharded = files.Count > 1 || files[0].File != SingleFile;
        if (sharded)
        {
            var weightMap = new JsonObject();
            foreach (var (file, keys) in files.SelectMany(f => f.Keys.Select(k => (f.File, k))).OrderBy(x => x.k, StringComparer.Ordinal))
                weightMap[keys] = file;
            var index = new JsonObject
            {
                ["metadata"] = new JsonObject { ["total_size"] = tensors.Sum(t => Bytes(t.Value)) },
                ["weight_map"] = weightMap,
            };
            AtomicFile.WriteAllText(Path.Combine(dir, IndexFile), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
        else stale.Add(IndexFile);
        foreach (var file in stale) File.Delete(Path.Combine(dir, file));
    }

    static List<string> ExistingWeightFiles(string dir)
    {
        var found = new List<string>();
        if (File.Exists(Path.Combine(dir, SingleFile))) found.Add(SingleFile);
        try
        {
            if (File.Exists(Path.Combine(dir, IndexFile)) && JsonFiles.ReadObject(Path.Combine(dir, IndexFile))["weight_map"] is JsonObject map)
                found.AddRange(map.Select(kv => kv.Value?.ToString() ?? "").Where(f => f.Length > 0 && !f.Contains('/') && File.Exists(Path.Combine(dir, f))).Distinct());
        }
        catch (Exception e) when (e is UserError or InvalidOperationException) { } // an unreadable old index is replaced anyway
        return found;
    }
}
