using System.Collections;
using System.Text.Json.Nodes;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Parquet.Serialization;

namespace Axolotl.Data;

/// <summary>Parquet and Arrow IPC files (stream, as <c>save_to_disk</c> writes them, or file format) into JSON rows.</summary>
static class ColumnarReader
{
    public static List<Row> ReadParquet(string path)
    {
        using var stream = File.OpenRead(path);
        var result = ParquetSerializer.DeserializeUntypedAsync(stream).GetAwaiter().GetResult();
        var rows = new List<Row>(result.Data.Count);
        for (int i = 0; i < result.Data.Count; i++)
        {
            var obj = new JsonObject();
            foreach (var (key, value) in result.Data[i]) obj[key] = ToJson(value);
            rows.Add(new Row(obj, path, i + 1));
        }
        return rows;
    }

    /// <summary>The rows of <see cref="ReadParquet"/>, one row group in memory at a time.</summary>
    public static IEnumerable<Row> StreamParquet(string path)
    {
        using var stream = File.OpenRead(path);
        int groups;
        var reader = Parquet.ParquetReader.CreateAsync(stream, leaveStreamOpen: true).GetAwaiter().GetResult();
        try { groups = reader.RowGroupCount; }
        finally { reader.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        int number = 0;
        for (int g = 0; g < groups; g++)
        {
            stream.Position = 0;
            var result = ParquetSerializer.DeserializeUntypedAsync(stream, null, g).GetAwaiter().GetResult();
            foreach (var values in result.Data)
            {
                var obj = new JsonObject();
                foreach (var (key, value) in values) obj[key] = ToJson(value);
                yield return new Row(obj, path, ++number);
            }
        }
    }

    static JsonNode? ToJson(object? value) => value switch
    {
        null => null,
        string s => s,
        bool b => b,
        int or long or short or sbyte or byte or ushort or uint => JsonValue.Create(Convert.ToInt64(value)),
        ulong u => JsonValue.Create(u),
        float f => JsonValue.Create((double)f),
        double d => JsonValue.Create(d),
        decimal m => JsonValue.Create(m),
        DateTime t => t.ToString("O"),
        DateTimeOffset t => t.ToString("O"),
        byte[] bytes => Convert.ToBase64String(bytes),
        IDictionary dict => new JsonObject(dict.Keys.Cast<object>().Select(k => KeyValuePair.Create(k.ToString()!, ToJson(dict[k])))),
        IEnumerable list => new JsonArray(list.Cast<object?>().Select(ToJson).ToArray()),
        _ => value.ToString(),
    };

    public static List<Row> ReadArrow(string path)
    {
        var rows = new List<Row>();
        foreach (var batch in ArrowBatches(path))
            using (batch)
            {
                var names = batch.Schema.FieldsList.Select(f => f.Name).ToArray();
                for (int i = 0; i < batch.Length; i++)
                {
                    var obj = new JsonObject();
                    for (int c = 0; c < names.Length; c++) obj[names[c]] = ToJson(batch.Column(c), i);
                    rows.Add(new Row(obj, path, rows.Count + 1));
                }
            }
        return rows;
    }

    /// <summary>HF writes the stream format; the file format (magic "ARROW1") is read too.</summary>
    static IEnumerable<RecordBatch> ArrowBatches(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length >= 6 && System.Text.Encoding.ASCII.GetString(bytes, 0, 6) == "ARROW1")
        {
            using var file = new ArrowFileReader(new MemoryStream(bytes));
            int count = file.RecordBatchCountAsync().AsTask().GetAwaiter().GetResult();
            for (int b = 0; b < count; b++) yield return file.ReadRecordBatchAsync(b).AsTask().GetAwaiter().GetResult();
            yield break;
        }
        using var reader = new ArrowStreamReader(new MemoryStream(bytes));
        while (reader.ReadNextRecordBatch() is { } batch) yield return batch;
    }

    static JsonNode? ToJson(IArrowArray array, int i)
    {
        if (array.IsNull(i)) return null;
        return array switch
        {
            StringArray s => s.GetString(i),
            LargeStringArray s => s.GetString(i),
            BooleanArray b => b.GetValue(i),
            Int8Array a => (long)a.GetValue(i)!.Value,
            Int16Array a => (long)a.GetValue(i)!.Value,
            Int32Array a => (long)a.GetValue(i)!.Value,
            Int64Array a => a.GetValue(i)!.Value,
            UInt8Array a => (long)a.GetValue(i)!.Value,
            UInt16Array a => (long)a.GetValue(i)!.Value,
            UInt32Array a => (long)a.GetValue(i)!.Value,
            UInt64Array a => a.GetValue(i)!.Value,
            FloatArray a => (double)a.GetValue(i)!.Value,
            DoubleArray a => a.GetValue(i)!.Value,
            ListArray l => Elements(l.GetSlicedValues(i)),
            LargeListArray l => Elements(l.GetSlicedValues(i)),
            FixedSizeListArray l => Elements(l.GetSlicedValues(i)),
            // A struct slice (list<struct> elements) keeps unsliced children, so its own offset applies to them.
            StructArray s => new JsonObject(((Apache.Arrow.Types.StructType)s.Data.DataType).Fields
                .Select((f, k) => KeyValuePair.Create(f.Name, ToJson(s.Fields[k], s.Offset + i)))),
            BinaryArray b => Convert.ToBase64String(b.GetBytes(i).ToArray()),
            _ => throw new UserError($"Arrow column type {array.Data.DataType.Name} is not read."),
        };
    }

    static JsonArray Elements(IArrowArray values)
    {
        var list = new JsonArray();
        for (int k = 0; k < values.Length; k++) list.Add(ToJson(values, k));
        return list;
    }
}
