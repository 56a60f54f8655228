using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json.Nodes;

namespace Axolotl.Training;

/// <summary>
/// TensorBoard event files without TensorFlow: <c>runs/&lt;timestamp&gt;/events.out.tfevents.&lt;secs&gt;.&lt;host&gt;</c>, a
/// TFRecord stream of tf.Event protobufs encoded by hand, with the scalar tags transformers' TensorBoardCallback uses.
/// </summary>
internal sealed class TensorBoardWriter : IDisposable
{
    public const string RunsFolder = "runs";
    readonly FileStream _file;

    public TensorBoardWriter(string outputDir)
    {
        var now = DateTimeOffset.UtcNow;
        var dir = System.IO.Path.Combine(outputDir, RunsFolder, now.ToLocalTime().ToString("MMMdd_HH-mm-ss", CultureInfo.InvariantCulture) + "_" + Environment.MachineName);
        Directory.CreateDirectory(dir);
        Path = System.IO.Path.Combine(dir, $"events.out.tfevents.{now.ToUnixTimeSeconds()}.{Environment.MachineName}");
        _file = new FileStream(Path, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
        WriteRecord(Event(WallTime(), 0, fileVersion: "brain.Event:2", values: []));
    }

    public string Path { get; }

    /// <summary>
    /// The tag of a log_history key, as TensorBoardCallback rewrites it: eval_x → eval/x, anything else → train/x.
    /// </summary>
    public static string Tag(string key) => key.StartsWith("eval_", StringComparison.Ordinal) ? "eval/" + key["eval_".Length..] : "train/" + key;

    /// <summary>One event with every numeric scalar of a log entry (all but step, which is the event's own field).</summary>
    public void Write(JsonObject entry)
    {
        if (entry["step"] is not JsonNode stepNode) return;
        var values = entry.Where(kv => kv.Key != "step" && kv.Value is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.Number)
            .Select(kv => (Tag(kv.Key), (float)LossCurve.Number(kv.Value!))).ToList();
        if (values.Count == 0) return;
        WriteRecord(Event(WallTime(), (long)LossCurve.Number(stepNode), null, values));
    }

    static double WallTime() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;

    void WriteRecord(byte[] data)
    {
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], MaskedCrc(header[..8]));
        Span<byte> footer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc(data));
        _file.Write(header);
        _file.Write(data);
        _file.Write(footer);
        _file.Flush();
    }

    /// <summary>CRC-32C (Castagnoli) of the bytes, as TFRecord checks them.</summary>
    public static uint Crc32C(ReadOnlySpan<byte> bytes)
    {
        uint crc = ~0u;
        foreach (var b in bytes) crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }

    /// <summary>TFRecord stores CRCs rotated and offset so that a CRC of data holding CRCs stays well distributed.</summary>
    public static uint MaskedCrc(ReadOnlySpan<byte> bytes)
    {
        uint crc = Crc32C(bytes);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    // tf.Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5 (Summary).
    // Summary.value = 1 (Value); Value: tag = 1 (string), simple_value = 2 (float).
    static byte[] Event(double wallTime, long step, string? fileVersion, IReadOnlyList<(string Tag, float Value)> values)
    {
        var e = new MemoryStream();
        Span<byte> number = stackalloc byte[8];
        BinaryPrimitives.WriteDoubleLittleEndian(number, wallTime);
        Key(e, 1, 1); e.Write(number);
        Key(e, 2, 0); Varint(e, (ulong)step);
        if (fileVersion != null) Bytes(e, 3, Encoding.UTF8.GetBytes(fileVersion));
        if (values.Count > 0)
        {
            var summary = new MemoryStream();
            foreach (var (tag, value) in values)
            {
                var v = new MemoryStream();
                Bytes(v, 1, Encoding.UTF8.GetBytes(tag));
                BinaryPrimitives.WriteSingleLittleEndian(number, value);
                Key(v, 2, 5); v.Write(number[..4]);
                Bytes(summary, 1, v.ToArray());
            }
            Bytes(e, 5, summary.ToArray());
        }
        return e.ToArray();
    }

    static void Key(Stream s, int field, int wireType) => Varint(s, (ulong)(field << 3 | wireType));
    static void Bytes(Stream s, int field, byte[] bytes) { Key(s, field, 2); Varint(s, (ulong)bytes.Length); s.Write(bytes); }
    static void Varint(Stream s, ulong value)
    {
        for (; value >= 0x80; value >>= 7) s.WriteByte((byte)(value | 0x80));
        s.WriteByte((byte)value);
    }

    public void Dispose() => _file.Dispose();
}
