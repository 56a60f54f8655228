using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Axolotl.Config;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Parquet.Serialization;

namespace Axolotl.Data;

/// <summary>
/// Prepared examples cached in <c>dataset_prepared_path/&lt;key&gt;/</c> as Parquet (columns input_ids, labels,
/// attention_mask: what HF datasets reads). The key hashes everything that changes the result: the data keys of the
/// config, each dataset file's path, size and modification time, and the tokenizer files' content (not only their
/// path: Axolotl's stale-cache bugs). A folder is written under a temporary name and renamed, so a half-written cache
/// is never found; one that cannot be read is rebuilt.
/// </summary>
public static class DatasetCache
{
    const int Version = 1;

    public static string Key(AxolotlConfig config, string tokenizerDir)
    {
        var parts = new JsonObject
        {
            ["version"] = Version,
            ["datasets"] = Describe(config.Datasets),
            ["test_datasets"] = Describe(config.TestDatasets),
            ["sequence_len"] = config.SequenceLen,
            ["train_on_inputs"] = config.TrainOnInputs,
            ["seed"] = config.Seed,
            ["shuffle_merged_datasets"] = config.ShuffleMergedDatasets,
            ["excess_length_strategy"] = config.ExcessLengthStrategy,
            ["min_sample_len"] = config.MinSampleLen,
            ["dataset_exact_deduplication"] = config.DatasetExactDeduplication,
            ["val_set_size"] = config.ValSetSize,
            ["bad_rows"] = config.BadRows,
            ["sample_packing"] = config.SamplePacking, // packing drops examples without a trained token
            ["special_tokens"] = config.SpecialTokens is { } special ? JsonSerializer.SerializeToNode(special) : null,
            ["tokens"] = config.Tokens is { } tokens ? JsonSerializer.SerializeToNode(tokens) : null,
            ["chat_template"] = config.ChatTemplate,
            ["chat_template_jinja"] = FileOrText(config.ChatTemplateJinja),
            ["eot_tokens"] = config.EotTokens is { } eot ? new JsonArray(eot.Select(t => (JsonNode)t).ToArray()) : null,
            ["tokenizer"] = TokenizerDigest(config, tokenizerDir),
        };
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(parts.ToJsonString())))[..32];
    }

    /// <summary>A template given as a path counts by its content, so editing the file invalidates the cache.</summary>
    static string? FileOrText(string? value) => value is not null && File.Exists(value) ? File.ReadAllText(value) : value;

    static JsonArray Describe(IEnumerable<DatasetConfig> datasets)
    {
        var list = new JsonArray();
        foreach (var d in datasets)
        {
            var entry = JsonSerializer.SerializeToNode(d)!.AsObject();
            entry["chat_template_jinja"] = FileOrText(d.ChatTemplateJinja);
            entry["user_defined"] = d.UserDefined is { } f ? JsonSerializer.SerializeToNode(f) : null;
            entry["files"] = new JsonArray(DataFiles(d).Select(f =>
            {
                var info = new FileInfo(f);
                return (JsonNode)$"{Path.GetFullPath(f)}|{info.Length}|{info.LastWriteTimeUtc.Ticks}";
            }).ToArray());
            list.Add(entry);
        }
        return list;
    }

    static IEnumerable<string> DataFiles(DatasetConfig d)
    {
        var roots = new List<string> { d.Path };
        if (d.DataFiles != null) roots.AddRange(d.DataFiles.Select(f => Directory.Exists(d.Path) && !Path.IsPathRooted(f) ? Path.Combine(d.Path, f) : f));
        foreach (var root in roots)
        {
            if (File.Exists(root)) yield return root;
            else if (Directory.Exists(root))
                foreach (var f in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)) yield return f;
        }
    }

    /// <summary>The content of the tokenizer's files; a dataset set that needs no tokenizer (pre-tokenized) hashes none.</summary>
    static string TokenizerDigest(AxolotlConfig config, string tokenizerDir)
    {
        if (config.Datasets.Concat(config.TestDatasets).All(d => d.Type == null && d.UserDefined == null) || !Directory.Exists(tokenizerDir)) return "";
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var name in new[] { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja" })
        {
            var path = Path.Combine(tokenizerDir, name);
            if (!File.Exists(path)) continue;
            hash.AppendData(Encoding.UTF8.GetBytes(name));
            hash.AppendData(File.ReadAllBytes(path));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    sealed class Meta
    {
        [JsonPropertyName("rows_read")] public int RowsRead { get; set; }
        [JsonPropertyName("dropped_too_long")] public int DroppedTooLong { get; set; }
        [JsonPropertyName("dropped_too_short")] public int DroppedTooShort { get; set; }
        [JsonPropertyName("truncated")] public int Truncated { get; set; }
        [JsonPropertyName("duplicates")] public int Duplicates { get; set; }
        [JsonPropertyName("dropped_untrainable")] public int DroppedUntrainable { get; set; }
    }

    /// <summary>The cached dataset, or null when there is none; a cache that cannot be read is reported and removed.</summary>
    public static PreparedDataset? TryLoad(string folder, Action<string> warn)
    {
        if (!Directory.Exists(folder)) return null;
        try
        {
            var meta = JsonSerializer.Deserialize<Meta>(File.ReadAllText(Path.Combine(folder, "meta.json")))!;
            var train = ReadArrow(Path.Combine(folder, "train.arrow"));
            var evalPath = Path.Combine(folder, "eval.arrow");
            var eval = File.Exists(evalPath) ? ReadArrow(evalPath) : [];
            return new PreparedDataset(train, meta.RowsRead, meta.DroppedTooLong, meta.DroppedTooShort)
            {
                Eval = eval, Truncated = meta.Truncated, Duplicates = meta.Duplicates, DroppedUntrainable = meta.DroppedUntrainable, FromCache = true,
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            warn($"the prepared dataset in {folder} cannot be read ({e.Message.Split('\n')[0]}); rebuilding it.");
            try { Directory.Delete(folder, recursive: true); } catch (IOException) { }
            return null;
        }
    }

    /// <summary>
    /// input_ids and labels as an Arrow IPC stream (what HF datasets' save_to_disk writes; the attention mask, all ones,
    /// is left to the Parquet files), read back as flat buffers: the
    /// Parquet files are for other tools, this is what makes a cache hit take well under a second.
    /// </summary>
    static void WriteArrow(string path, IReadOnlyList<Example> examples)
    {
        var offsets = new ArrowBuffer.Builder<int>(examples.Count + 1);
        offsets.Append(0);
        int total = 0;
        foreach (var e in examples) offsets.Append(total += e.InputIds.Length);
        var offsetBuffer = offsets.Build();
        ListArray Column(Func<Example, int[]> pick)
        {
            var values = new ArrowBuffer.Builder<int>(total);
            foreach (var e in examples) values.Append(pick(e));
            var array = new Int32Array(values.Build(), ArrowBuffer.Empty, total, 0, 0);
            return new ListArray(new Apache.Arrow.Types.ListType(Apache.Arrow.Types.Int32Type.Default), examples.Count, offsetBuffer, array, ArrowBuffer.Empty);
        }
        var batch = new RecordBatch.Builder()
            .Append("input_ids", false, Column(e => e.InputIds))
            .Append("labels", false, Column(e => e.Labels))
            .Build();
        using var stream = File.Create(path);
        using var writer = new ArrowStreamWriter(stream, batch.Schema);
        writer.WriteRecordBatch(batch);
        writer.WriteEnd();
    }

    static List<Example> ReadArrow(string path)
    {
        // Whole-file memory: the reader then slices buffers instead of copying each through a stream.
        using var reader = new ArrowStreamReader(File.ReadAllBytes(path).AsMemory());
        var examples = new List<Example>();
        while (reader.ReadNextRecordBatch() is { } batch)
            using (batch)
            {
                int idsAt = batch.Schema.GetFieldIndex("input_ids"), labelsAt = batch.Schema.GetFieldIndex("labels");
                if (idsAt < 0 || labelsAt < 0) throw new InvalidDataException("no input_ids or labels column");
                var ids = (ListArray)batch.Column(idsAt);
                var labels = (ListArray)batch.Column(labelsAt);
                var idValues = ((Int32Array)ids.Values).Values;
                var labelValues = ((Int32Array)labels.Values).Values;
                var idOffsets = ids.ValueOffsets;
                var labelOffsets = labels.ValueOffsets;
                for (int r = 0; r < batch.Length; r++)
                {
                    int from = idOffsets[r], to = idOffsets[r + 1];
                    if (labelOffsets[r] != from || labelOffsets[r + 1] != to || to <= from) throw new InvalidDataException($"row {r}: input_ids and labels differ in length");
                    examples.Add(new Example(idValues[from..to].ToArray(), labelValues[from..to].ToArray()));
                }
            }
        return examples;
    }

    public static void Save(string folder, PreparedDataset data)
    {
        var parent = Path.GetDirectoryName(Path.GetFullPath(folder))!;
        Directory.CreateDirectory(parent);
        var temp = Path.Combine(parent, $".{Path.GetFileName(folder)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        try
        {
            WriteExamples(Path.Combine(temp, "train.parquet"), data.Examples);
            WriteArrow(Path.Combine(temp, "train.arrow"), data.Examples);
            if (data.Eval.Count > 0)
            {
                WriteExamples(Path.Combine(temp, "eval.parquet"), data.Eval);
                WriteArrow(Path.Combine(temp, "eval.arrow"), data.Eval);
            }
            File.WriteAllText(Path.Combine(temp, "meta.json"), JsonSerializer.Serialize(new Meta
            {
                RowsRead = data.RowsRead, DroppedTooLong = data.DroppedTooLong, DroppedTooShort = data.DroppedTooShort,
                Truncated = data.Truncated, Duplicates = data.Duplicates, DroppedUntrainable = data.DroppedUntrainable,
            }));
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            Directory.Move(temp, folder);
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    sealed class ParquetRow
    {
        [JsonPropertyName("input_ids")] public List<int> InputIds { get; set; } = [];
        [JsonPropertyName("labels")] public List<int> Labels { get; set; } = [];
        [JsonPropertyName("attention_mask")] public List<int> AttentionMask { get; set; } = [];
    }

    /// <summary>Parquet with standard LIST columns, for pandas, pyarrow and HF datasets (load_dataset("parquet", ...)).</summary>
    static void WriteExamples(string path, IReadOnlyList<Example> examples)
    {
        var rows = examples.Select(e => new ParquetRow
        {
            InputIds = [.. e.InputIds], Labels = [.. e.Labels], AttentionMask = [.. Enumerable.Repeat(1, e.InputIds.Length)],
        });
        using var stream = File.Create(path);
        ParquetSerializer.SerializeAsync(rows, stream).GetAwaiter().GetResult();
    }
}
