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
/// Prepared examples cached in <c>dataset_prepared_path/&lt;key&gt;/</c>: Arrow IPC stream files
/// (<c>train-00000-of-00001.arrow</c>, the format of HF datasets' save_to_disk), which a later run memory-maps and
/// trains from in place (<see cref="MappedExamples"/>), and Parquet copies (columns input_ids, labels, attention_mask)
/// for pandas and HF datasets' load_dataset("parquet"). Arrow is what is read back because it needs no decoding: a
/// Parquet read of 100k rows takes seconds, a mapping milliseconds. The key hashes everything that changes the
/// result: the data keys of the config, each dataset file's path, size and modification time, and the tokenizer
/// files' content (not only their path: Axolotl's stale-cache bugs). A folder is written under a temporary name and
/// renamed, so a half-written cache is never found; one whose files do not match meta.json's sizes and row counts,
/// or whose Arrow structure is broken, is rebuilt.
/// </summary>
internal static class DatasetCache
{
    const int Version = 2;

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
            ["rl"] = config.Rl is { } rl ? ConfigLoader.Spelling(rl) : null, // preference pairs are stored as chosen/rejected examples
            ["max_prompt_len"] = config.MaxPromptLen,
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

    /// <summary>
    /// The content of the tokenizer's files; a dataset set that needs no tokenizer (pre-tokenized) hashes none. Hashed
    /// once per process for each set of file sizes and modification times (the stamp data files are keyed by too).
    /// </summary>
    static string TokenizerDigest(AxolotlConfig config, string tokenizerDir)
    {
        if (config.Datasets.Concat(config.TestDatasets).All(d => d.Type == null && d.UserDefined == null) || !Directory.Exists(tokenizerDir)) return "";
        var files = TokenizerFiles.Select(name => new FileInfo(Path.Combine(tokenizerDir, name))).Where(f => f.Exists).ToList();
        var stamp = string.Join("|", files.Select(f => $"{f.FullName}:{f.Length}:{f.LastWriteTimeUtc.Ticks}"));
        return Digests.GetOrAdd(stamp, _ =>
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            foreach (var f in files)
            {
                hash.AppendData(Encoding.UTF8.GetBytes(f.Name));
                hash.AppendData(File.ReadAllBytes(f.FullName));
            }
            return Convert.ToHexStringLower(hash.GetHashAndReset());
        });
    }

    static readonly string[] TokenizerFiles = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"];
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> Digests = new();

    sealed class Meta
    {
        [JsonPropertyName("rows_read")] public int RowsRead { get; set; }
        [JsonPropertyName("dropped_too_long")] public int DroppedTooLong { get; set; }
        [JsonPropertyName("dropped_too_short")] public int DroppedTooShort { get; set; }
        [JsonPropertyName("truncated")] public int Truncated { get; set; }
        [JsonPropertyName("duplicates")] public int Duplicates { get; set; }
        [JsonPropertyName("dropped_untrainable")] public int DroppedUntrainable { get; set; }
        [JsonPropertyName("train")] public SplitFiles Train { get; set; } = new();
        [JsonPropertyName("eval")] public SplitFiles Eval { get; set; } = new();
    }

    /// <summary>A split's Arrow files with their sizes and its row count: what makes a truncated or swapped file cheap to notice.</summary>
    internal sealed class SplitFiles
    {
        [JsonPropertyName("rows")] public int Rows { get; set; }
        [JsonPropertyName("files")] public List<ArrowFile> Files { get; set; } = [];
    }

    internal sealed record ArrowFile([property: JsonPropertyName("name")] string Name, [property: JsonPropertyName("bytes")] long Bytes);

    /// <summary>The cached dataset, or null when there is none; a cache that cannot be read is reported and removed.</summary>
    public static PreparedDataset? TryLoad(string folder, Action<string> warn)
    {
        if (!Directory.Exists(folder)) return null;
        MappedExamples? train = null, eval = null;
        try
        {
            var meta = JsonSerializer.Deserialize<Meta>(File.ReadAllText(Path.Combine(folder, "meta.json")))!;
            if (meta.Train.Files.Count == 0) throw new InvalidDataException("meta.json lists no training files");
            train = Open(folder, meta.Train);
            eval = Open(folder, meta.Eval);
            return new PreparedDataset(train, meta.RowsRead, meta.DroppedTooLong, meta.DroppedTooShort)
            {
                Eval = eval, Truncated = meta.Truncated, Duplicates = meta.Duplicates, DroppedUntrainable = meta.DroppedUntrainable, FromCache = true,
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            train?.Dispose();
            eval?.Dispose();
            warn($"the prepared dataset in {folder} cannot be read ({e.Message.Split('\n')[0]}); rebuilding it.");
            try { Directory.Delete(folder, recursive: true); } catch (IOException) { }
            return null;
        }
    }

    /// <summary>Maps a split's files after checking their sizes against meta.json; the rows they hold must be the count it records.</summary>
    internal static MappedExamples Open(string folder, SplitFiles split)
    {
        foreach (var f in split.Files)
        {
            var info = new FileInfo(Path.Combine(folder, f.Name));
            if (!info.Exists || info.Length != f.Bytes)
                throw new InvalidDataException($"{f.Name} is {(info.Exists ? $"{info.Length} bytes, not {f.Bytes}" : "missing")}");
        }
        var examples = MappedExamples.Open(split.Files.Select(f => Path.Combine(folder, f.Name)));
        if (examples.Count != split.Rows)
        {
            examples.Dispose();
            throw new InvalidDataException($"the Arrow files hold {examples.Count} rows, not {split.Rows}");
        }
        return examples;
    }

    /// <summary>Under 2 GiB, the most one mapping can be read as; a smaller size keeps a file easy to move around.</summary>
    internal const long MaxArrowFileBytes = 1L << 30;

    /// <summary>
    /// input_ids and labels as list&lt;int32&gt; columns in Arrow IPC stream files (the format of HF datasets'
    /// save_to_disk, data-00000-of-00001.arrow), split into files of at most <paramref name="maxFileBytes"/>: this is
    /// what training maps. The attention mask, all ones, is left to the Parquet files.
    /// </summary>
    internal static SplitFiles WriteArrow(string folder, string split, IReadOnlyList<Example> examples, long maxFileBytes = MaxArrowFileBytes)
    {
        var parts = new List<(int From, int To)>();
        long bytes = 0;
        int start = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            long row = 8 + 8L * examples[i].InputIds.Length; // an offset and the tokens, in each of the two columns
            if (i > start && bytes + row > maxFileBytes)
            {
                parts.Add((start, i));
                (start, bytes) = (i, 0);
            }
            bytes += row;
        }
        parts.Add((start, examples.Count));
        var result = new SplitFiles { Rows = examples.Count };
        foreach (var (from, to) in parts)
        {
            var name = $"{split}-{result.Files.Count:D5}-of-{parts.Count:D5}.arrow";
            var path = Path.Combine(folder, name);
            WriteArrowFile(path, examples, from, to);
            result.Files.Add(new ArrowFile(name, new FileInfo(path).Length));
        }
        return result;
    }

    static void WriteArrowFile(string path, IReadOnlyList<Example> examples, int from, int to)
    {
        var offsets = new ArrowBuffer.Builder<int>(to - from + 1);
        offsets.Append(0);
        int total = 0;
        for (int i = from; i < to; i++) offsets.Append(total += examples[i].InputIds.Length);
        var offsetBuffer = offsets.Build();
        ListArray Column(Func<Example, int[]> pick)
        {
            var values = new ArrowBuffer.Builder<int>(total);
            for (int i = from; i < to; i++) values.Append(pick(examples[i]));
            var array = new Int32Array(values.Build(), ArrowBuffer.Empty, total, 0, 0);
            return new ListArray(new Apache.Arrow.Types.ListType(Apache.Arrow.Types.Int32Type.Default), to - from, offsetBuffer, array, ArrowBuffer.Empty);
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

    public static void Save(string folder, PreparedDataset data)
    {
        var parent = Path.GetDirectoryName(Path.GetFullPath(folder))!;
        Directory.CreateDirectory(parent);
        var temp = Path.Combine(parent, $".{Path.GetFileName(folder)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        try
        {
            WriteExamples(Path.Combine(temp, "train.parquet"), data.Examples);
            var train = WriteArrow(temp, "train", data.Examples);
            var eval = new SplitFiles();
            if (data.Eval.Count > 0)
            {
                WriteExamples(Path.Combine(temp, "eval.parquet"), data.Eval);
                eval = WriteArrow(temp, "eval", data.Eval);
            }
            File.WriteAllText(Path.Combine(temp, "meta.json"), JsonSerializer.Serialize(new Meta
            {
                RowsRead = data.RowsRead, DroppedTooLong = data.DroppedTooLong, DroppedTooShort = data.DroppedTooShort,
                Truncated = data.Truncated, Duplicates = data.Duplicates, DroppedUntrainable = data.DroppedUntrainable,
                Train = train, Eval = eval,
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
