using System.Text.Json.Nodes;
using Axolotl.IO;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>Micro-batches read from a stream, for a trainer that cannot know the data's length in advance.</summary>
internal interface IBatchStream
{
    /// <summary>
    /// The micro-batches from the <paramref name="index"/>-th (0-based) on, without end: the data starts over when it
    /// runs out, as transformers re-reads an iterable dataset each epoch until max_steps.
    /// </summary>
    IEnumerator<Batch> From(long index);
    /// <summary>Tokens per row, for the FLOP estimate.</summary>
    double TokensPerRow { get; }
}

/// <summary>
/// How far a stream's consumed micro-batches reach: pass over the data (<see cref="Epoch"/>), the first row (after
/// skip and shuffle) of the buffer being read, how many of that buffer's rows-of-a-batch were used, micro-batches in all.
/// </summary>
internal sealed record StreamPosition(int Epoch, long BufferStart, int UnitsInBuffer, long Batches)
{
    public static readonly StreamPosition Start = new(0, 0, 0, 0);
}

internal sealed record PretrainingOptions
{
    public required int SequenceLen { get; init; }
    public int MicroBatchSize { get; init; } = 1;
    /// <summary>pretraining_sample_concatenation: whole texts packed into sequence_len blocks (false: one text per row).</summary>
    public bool Concatenate { get; init; }
    /// <summary>sample_packing: samples kept whole in bins of micro_batch_size × sequence_len, one bin per micro-batch.</summary>
    public PackingOptions? Packing { get; init; }
    /// <summary>streaming_multipack_buffer_size: rows shuffled, tokenized and packed together.</summary>
    public int BufferSize { get; init; } = 10_000;
    /// <summary>shuffle_merged_datasets: rows go through a seeded shuffle buffer of ShuffleBufferSize.</summary>
    public bool Shuffle { get; init; } = true;
    /// <summary>Rows of the shuffle buffer; BufferSize when unset.</summary>
    public int? ShuffleBufferSize { get; init; }
    public int Seed { get; init; } = 42;
    public int PadTokenId { get; init; }
    /// <summary>pad_to_sequence_len without packing: rows padded to a multiple of this.</summary>
    public int? PadToMultipleOf { get; init; }
    public string TextColumn { get; init; } = "text";
    /// <summary>Rows left out at the start of the data (the entry's skip), every pass.</summary>
    public int Skip { get; init; }
}

/// <summary>
/// Axolotl's <c>pretraining_dataset</c>: rows are read lazily (skip, then a seeded shuffle buffer), taken in buffers of
/// streaming_multipack_buffer_size rows, and turned into micro-batches while training runs:
/// <list type="bullet">
/// <item>default (encode_streaming without concatenation): each text is one row, tokenized with the tokenizer's special
/// tokens and truncated to sequence_len − 2; micro_batch_size rows are right-padded together.</item>
/// <item><c>pretraining_sample_concatenation: true</c>: each text (truncated the same way) gets EOS and one pad token
/// (label -100) appended; texts are laid back to back into rows of exactly sequence_len, never split: a text that does
/// not fit closes the row with padding, as does the last row of each buffer.</item>
/// <item><c>sample_packing: true</c> (encode_packed_streaming): the entry's <c>type</c> tokenizes each row (pretrain: windows of
/// sequence_len − 1 tokens overlapping by min(256, (sequence_len − 1) // 2), each with EOS); samples outside [2,
/// sequence_len] are dropped; each buffer is packed into bins of micro_batch_size × sequence_len with position ids
/// restarting per sample (<see cref="Data.Packing"/>), one bin per micro-batch.</item>
/// </list>
/// Everything depends only on the config, so a resumed run regenerates exactly the batches an uninterrupted one sees;
/// the consumed position (<see cref="Consumed"/>) is saved with each checkpoint so a resume re-reads only the current buffer.
/// </summary>
internal sealed class PretrainingStream : IBatchStream
{
    public const string PositionFile = "pretraining_stream.json";

    readonly Func<IEnumerable<Row>> _rows;
    readonly Func<Tokenizer> _tokenizer;
    readonly PretrainingOptions _o;
    readonly IPromptStrategy? _strategy;
    readonly BadRows _bad;
    readonly string _name;
    StreamPosition? _resume;

    /// <param name="rows">The data's rows from the start, each call a fresh pass.</param>
    /// <param name="strategy">With packing, the entry's SFT strategy; null for type pretrain (raw text).</param>
    public PretrainingStream(Func<IEnumerable<Row>> rows, Func<Tokenizer> tokenizer, PretrainingOptions options,
                             IPromptStrategy? strategy = null, BadRows? bad = null, string name = "pretraining_dataset")
    {
        _rows = rows;
        _tokenizer = tokenizer;
        _o = options;
        _strategy = strategy;
        _bad = bad ?? new BadRows(skip: false);
        _name = name;
    }

    /// <summary>The position after the last micro-batch handed out by <see cref="From"/>.</summary>
    public StreamPosition Consumed { get; private set; } = StreamPosition.Start;

    /// <summary>Rows left out under bad_rows: skip, per reason (a row read again after a restart or resume counts again).</summary>
    public IReadOnlyList<(string Reason, int Count, string First)> SkippedRows => _bad.Counts;

    public double TokensPerRow => _o.Packing is { } p ? p.BinCapacity : _o.SequenceLen;

    /// <summary>Writes <see cref="Consumed"/> into a checkpoint folder.</summary>
    public void SavePosition(string dir)
    {
        var p = Consumed;
        var json = new JsonObject { ["epoch"] = p.Epoch, ["buffer_start"] = p.BufferStart, ["units_in_buffer"] = p.UnitsInBuffer, ["batches"] = p.Batches };
        AtomicFile.WriteAllText(Path.Combine(dir, PositionFile), json.ToJsonString());
    }

    /// <summary>Reads a checkpoint's saved position, so <see cref="From"/> starts there instead of regenerating from the start.</summary>
    public void ResumeFrom(string dir)
    {
        var path = Path.Combine(dir, PositionFile);
        if (!File.Exists(path)) return;
        var json = JsonFiles.ReadObject(path);
        _resume = new StreamPosition((int)json["epoch"]!, (long)json["buffer_start"]!, (int)json["units_in_buffer"]!, (long)json["batches"]!);
    }

    public IEnumerator<Batch> From(long index)
    {
        var start = _resume is { } saved && saved.Batches == index ? saved : StreamPosition.Start;
        var batches = Batches(start).SkipWhile(b => b.After.Batches <= index);
        // Prepared on the training thread, not ahead on another one: a thread that allocates while the training thread is
        // inside libtorch can trigger the garbage collection that frees a temporary TorchSharp Scalar mid-call
        // (see Runtime.QuietMemoryProbe). Tokenizing a micro-batch costs milliseconds against a step's seconds.
        return batches.Select(b => { Consumed = b.After; return b.Batch; }).GetEnumerator();
    }

    /// <summary>Micro-batches from a position, each with the position just after it; single-threaded and lazy.</summary>
    public IEnumerable<(Batch Batch, StreamPosition After)> Batches(StreamPosition start)
    {
        long count = start.Batches;
        var group = new List<Example>(_o.MicroBatchSize);
        foreach (var (unit, epoch, bufferStart, used) in Units(start))
        {
            if (unit is Batch packed)
            {
                yield return (packed, new StreamPosition(epoch, bufferStart, used, ++count));
                continue;
            }
            group.Add((Example)unit);
            if (group.Count < _o.MicroBatchSize) continue;
            var batch = Batch.Pad(group, _o.PadTokenId, _o.PadToMultipleOf);
            yield return (_o.Concatenate ? MaskPadding(batch) : batch, new StreamPosition(epoch, bufferStart, used, ++count));
            group.Clear();
        }
    }

    /// <summary>
    /// Rows of micro-batches (Examples, or whole packed Batches), each with where it stands: its pass, its buffer's first
    /// row and how many units of that buffer come up to and including it.
    /// </summary>
    IEnumerable<(object Unit, int Epoch, long BufferStart, int Used)> Units(StreamPosition start)
    {
        for (int epoch = start.Epoch; ; epoch++)
        {
            bool resuming = epoch == start.Epoch;
            long bufferStart = resuming ? start.BufferStart : 0;
            int skipUnits = resuming ? start.UnitsInBuffer : 0;
            bool any = false;
            using var rows = Rows(epoch).GetEnumerator();
            // Rows before the resumed buffer were trained on already: read past them without tokenizing.
            for (long r = 0; r < bufferStart; r++)
                if (!rows.MoveNext()) break;
            for (; ; bufferStart += _o.BufferSize)
            {
                var buffer = Take(rows, _o.BufferSize);
                int used = 0;
                foreach (var unit in Encode(buffer, epoch, bufferStart))
                {
                    any = true;
                    if (++used <= skipUnits) continue;
                    yield return (unit, epoch, bufferStart, used);
                }
                skipUnits = 0;
                if (!buffer.More) break;
            }
            if (!any && !resuming)
                throw new UserError($"{_name}: the data gives nothing to train on (no rows, or every sample was dropped as shorter than 2 or longer than sequence_len {_o.SequenceLen} tokens).");
        }
    }

    /// <summary>The rows of one pass: skip first, then the shuffle buffer, as Axolotl applies them.</summary>
    IEnumerable<Row> Rows(int epoch)
    {
        var rows = _rows().Skip(_o.Skip);
        return _o.Shuffle ? BufferShuffle(rows, _o.ShuffleBufferSize ?? _o.BufferSize, new Random(unchecked(_o.Seed + epoch))) : rows;
    }

    /// <summary>
    /// datasets' IterableDataset.shuffle: a buffer fills up; then each new row takes the place of a random one, which is
    /// yielded; at the end the rest goes out in random order. Seeded per pass (its own generator, so not HF's order).
    /// </summary>
    public static IEnumerable<Row> BufferShuffle(IEnumerable<Row> rows, int size, Random random)
    {
        var buffer = new List<Row>(Math.Min(size, 65_536));
        foreach (var row in rows)
        {
            if (buffer.Count < size) { buffer.Add(row); continue; }
            int i = random.Next(size);
            yield return buffer[i];
            buffer[i] = row;
        }
        DatasetBuilder.Shuffle(buffer, random.Next());
        foreach (var row in buffer) yield return row;
    }

    /// <summary>Up to <paramref name="size"/> rows from a shared enumerator, pulled as they are read.</summary>
    sealed class Chunk(IEnumerator<Row> rows, int size) : IEnumerable<Row>
    {
        /// <summary>Whether the rows went on past this chunk (known once it was read to the end).</summary>
        public bool More { get; private set; }

        public IEnumerator<Row> GetEnumerator()
        {
            for (int n = 0; n < size; n++)
            {
                if (!rows.MoveNext()) yield break;
                yield return rows.Current;
            }
            More = true;
        }

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    static Chunk Take(IEnumerator<Row> rows, int size) => new(rows, size);

    IEnumerable<object> Encode(IEnumerable<Row> buffer, int epoch, long bufferStart)
    {
        if (_o.Packing is { } packing) return PackBuffer(buffer, packing, epoch, bufferStart);
        if (_strategy != null) return OneSamplePerRow(buffer);
        return _o.Concatenate ? Concatenated(buffer) : OneTextPerRow(buffer);
    }

    /// <summary>
    /// A streamed SFT dataset without packing (Axolotl's iterable map of the dataset's type): each row's samples as the
    /// type tokenizes them, micro_batch_size of them padded together; nothing is dropped, as Axolotl does not filter a stream.
    /// </summary>
    IEnumerable<object> OneSamplePerRow(IEnumerable<Row> buffer)
    {
        foreach (var row in buffer)
        {
            Example[] samples;
            try { samples = _strategy!.Tokenize(row).ToArray(); }
            catch (BadRowError e) { _bad.Report(e); continue; }
            foreach (var sample in samples)
                if (sample.InputIds.Length > 0) yield return sample;
        }
    }

    IEnumerable<object> OneTextPerRow(IEnumerable<Row> buffer)
    {
        foreach (var text in buffer.Select(Text).OfType<string>())
        {
            var ids = Truncated(_tokenizer(), text, _o.SequenceLen - 2);
            // Only a tokenizer without special tokens gives an empty row, and an empty row trains nothing.
            if (ids.Length > 0) yield return new Example(ids, (int[])ids.Clone());
        }
    }

    /// <summary>
    /// Axolotl's encode_streaming with concatenation: text + EOS + pad (the pad not trained), appended to the current
    /// row while it fits in sequence_len; otherwise the row is padded out and the text starts the next. The buffer's
    /// last row is padded out too.
    /// </summary>
    IEnumerable<object> Concatenated(IEnumerable<Row> buffer)
    {
        var tokenizer = _tokenizer();
        int eos = tokenizer.EosTokenId ?? throw new UserError("pretraining_sample_concatenation needs the tokenizer to have an eos_token.");
        int length = _o.SequenceLen, pad = _o.PadTokenId;
        var ids = new List<int>(length);
        var labels = new List<int>(length);
        Example Close()
        {
            while (ids.Count < length) { ids.Add(pad); labels.Add(Example.IgnoreIndex); }
            var block = new Example(ids.ToArray(), labels.ToArray());
            ids.Clear(); labels.Clear();
            return block;
        }
        foreach (var text in buffer.Select(Text).OfType<string>())
        {
            var piece = Truncated(tokenizer, text, length - 2);
            int size = piece.Length + 2;
            if (ids.Count > 0 && ids.Count + size > length) yield return Close();
            ids.AddRange(piece); ids.Add(eos); ids.Add(pad);
            labels.AddRange(piece); labels.Add(eos); labels.Add(Example.IgnoreIndex);
            if (ids.Count == length) yield return Close();
        }
        if (ids.Count > 0) yield return Close();
    }

    /// <summary>
    /// A concatenated block's attention as transformers builds it from Axolotl's attention_mask: causal across the
    /// texts (positions 0 … sequence_len − 1, one sample), with the pad tokens (the only untrained tokens here) seen by no
    /// query; a pad as a query still sees the tokens before it.
    /// </summary>
    static Batch MaskPadding(Batch b)
    {
        var positions = new long[b.InputIds.Length];
        var sequences = new long[b.InputIds.Length];
        for (int i = 0; i < positions.Length; i++)
        {
            positions[i] = i % b.Length;
            sequences[i] = b.Labels[i] == Example.IgnoreIndex ? -1 : 1;
        }
        return b with { PositionIds = positions, SequenceIds = sequences, RealTokens = sequences.Count(s => s > 0) };
    }

    /// <summary>Axolotl's encode_packed_streaming over one buffer: tokenize, drop out-of-range lengths, pack, collate each bin.</summary>
    IEnumerable<object> PackBuffer(IEnumerable<Row> buffer, PackingOptions packing, int epoch, long bufferStart)
    {
        var rows = buffer.ToList();
        var perRow = new Example[rows.Count][];
        var errors = new BadRowError?[rows.Count];
        var tokenizer = _tokenizer();
        Parallel.For(0, rows.Count, i =>
        {
            try { perRow[i] = _strategy != null ? _strategy.Tokenize(rows[i]).ToArray() : Windows(tokenizer, PromptStrategies.Str(rows[i], _o.TextColumn)); }
            catch (BadRowError e) { errors[i] = e; perRow[i] = []; }
        });
        foreach (var e in errors) if (e != null) _bad.Report(e);
        var examples = perRow.SelectMany(x => x).Where(e => e.InputIds.Length >= 2 && e.InputIds.Length <= _o.SequenceLen).ToList();
        if (examples.Count == 0) yield break;
        var order = Enumerable.Range(0, examples.Count).ToList();
        // Axolotl's sampler draws an unseeded random order; a seeded one keeps runs (and resumes) repeatable.
        DatasetBuilder.Shuffle(order, unchecked((_o.Seed * 31 + epoch) * 31 + (int)(bufferStart / _o.BufferSize)));
        foreach (var bins in Data.Packing.Pack(examples, order, packing).Batches)
            yield return Data.Packing.Collate(examples, bins, packing, _o.PadTokenId);
    }

    /// <summary>
    /// Axolotl's pretrain strategy: tokenizer(text, truncation, max_length = sequence_len − 1, overflowing tokens with
    /// stride min(256, (sequence_len − 1) // 2)), EOS appended to each window.
    /// </summary>
    Example[] Windows(Tokenizer tokenizer, string text)
    {
        int max = _o.SequenceLen - 1, stride = Math.Min(256, (_o.SequenceLen - 1) / 2);
        var windows = Overflowing(tokenizer, text, max, stride);
        int? eos = tokenizer.EosTokenId;
        return windows.Select(w =>
        {
            var ids = eos is int e ? [.. w, e] : w;
            return new Example(ids, (int[])ids.Clone());
        }).ToArray();
    }

    string? Text(Row row)
    {
        try { return PromptStrategies.Str(row, _o.TextColumn); }
        catch (BadRowError e)
        {
            _bad.Report(e);
            return null;
        }
    }

    /// <summary><c>tokenizer(text, truncation=True, max_length=max)["input_ids"]</c>: the text is cut, the special tokens kept.</summary>
    public static int[] Truncated(Tokenizer tokenizer, string text, int max) => Overflowing(tokenizer, text, max, stride: null)[0];

    /// <summary>
    /// The windows of tokenizers' truncation with overflowing tokens: the text's own tokens in windows of max minus the
    /// special tokens, each starting (window − stride) after the previous, until one reaches the end; each window gets
    /// the special tokens. Without a stride, only the first window.
    /// </summary>
    public static List<int[]> Overflowing(Tokenizer tokenizer, string text, int max, int? stride)
    {
        var full = tokenizer.Encode(text, addSpecialTokens: true);
        if (full.Count <= max) return [full.ToArray()];
        var content = tokenizer.Encode(text, addSpecialTokens: false);
        int added = full.Count - content.Count;
        int prefix = Enumerable.Range(0, added + 1).First(p => Enumerable.Range(0, content.Count).All(k => full[p + k] == content[k]));
        int width = Math.Max(0, max - added);
        if (stride is int s && s >= width)
            throw new UserError($"sequence_len {max + 1} is too small for a stride of {s} tokens: raise sequence_len.");
        int[] Window(int from, int to) =>
            [.. full.Take(prefix), .. content.Skip(from).Take(to - from), .. full.Skip(prefix + content.Count)];
        var windows = new List<int[]>();
        for (int from = 0; ; from += width - (stride ?? 0))
        {
            int to = Math.Min(from + width, content.Count);
            windows.Add(Window(from, to));
            if (to == content.Count || stride is null) break;
        }
        return windows;
    }

}

internal static class PretrainingStreams
{
    /// <summary>
    /// The stream <c>axolotl train</c> reads: the first pretraining_dataset entry, or with <c>streaming: true</c> and no
    /// pretraining_dataset the (one) SFT dataset, tokenized by its type as rows arrive (Axolotl's streamed SFT path).
    /// </summary>
    public static PretrainingStream ForConfig(Config.AxolotlConfig config, Func<Tokenizer> tokenizer, int padTokenId)
    {
        bool sft = config.PretrainingDataset.Count == 0;
        var d = sft ? config.Datasets[0] : config.PretrainingDataset[0];
        var bad = new BadRows(config.BadRows == "skip");
        IPromptStrategy? strategy = null;
        // Without packing Axolotl tokenizes a pretraining entry's text column whatever the type; with it, an SFT type
        // formats each row. A streamed SFT dataset is always tokenized by its type.
        if (sft || (config.SamplePacking && d.Type != "pretrain"))
            strategy = PromptStrategies.For(d, new StrategyContext(tokenizer, config.SequenceLen, config.TrainOnInputs)
            {
                ChatTemplate = x => DatasetBuilder.ResolveChatTemplate(config, x, tokenizer(), warn: null),
                EotTokens = config.EotTokens,
            });
        var options = new PretrainingOptions
        {
            SequenceLen = config.SequenceLen,
            MicroBatchSize = config.MicroBatchSize,
            Concatenate = !sft && config.PretrainingSampleConcatenation == true,
            // One row of micro_batch_size × sequence_len per micro-batch: Axolotl packs so and sets micro_batch_size to 1.
            Packing = config.SamplePacking ? new PackingOptions
            {
                SequenceLen = config.SequenceLen, MicroBatchSize = config.MicroBatchSize, RealBatches = false,
                GroupSize = config.SamplePackingGroupSize, BinSize = config.SamplePackingBinSize,
                Sequentially = config.SamplePackingSequentially, PadToSequenceLen = true,
            } : null,
            BufferSize = config.StreamingMultipackBufferSize,
            Shuffle = config.ShuffleMergedDatasets && !(sft && config.CurriculumSampling),
            // Unpacked streamed SFT goes through merge_datasets' IterableDataset.shuffle(seed), whose buffer is datasets' default.
            ShuffleBufferSize = sft && !config.SamplePacking ? DatasetsShuffleBuffer : null,
            Seed = config.Seed,
            PadTokenId = padTokenId,
            PadToMultipleOf = !config.SamplePacking && config.PadToSequenceLen == true ? PackingOptions.PadMultiple(config.SequenceLen) : sft ? 64 : null,
            TextColumn = d.TextColumn ?? "text",
            Skip = d.Skip ?? 0,
        };
        return new PretrainingStream(() => RowReader.Stream(d, bad), tokenizer, options, strategy, bad,
            sft ? $"dataset '{d.Path}' (streaming)" : $"pretraining_dataset '{d.Path}'");
    }

    /// <summary>datasets' IterableDataset.shuffle default buffer_size.</summary>
    const int DatasetsShuffleBuffer = 1000;

    /// <summary>One line on what the stream makes of the text.</summary>
    public static string Describe(Config.AxolotlConfig config)
    {
        bool sft = config.PretrainingDataset.Count == 0;
        var d = sft ? config.Datasets[0] : config.PretrainingDataset[0];
        return $"Data: streaming {(sft ? $"dataset '{d.Path}' (type {d.Type})" : $"pretraining_dataset '{d.Path}'")} for max_steps {config.MaxSteps}: " +
            (config.SamplePacking ? $"samples packed into one row of {config.MicroBatchSize} × {config.SequenceLen} tokens per micro-batch"
             : sft ? $"{config.MicroBatchSize} samples padded together per micro-batch"
             : config.PretrainingSampleConcatenation == true ? $"texts concatenated into blocks of {config.SequenceLen} tokens"
             : $"one text per row (up to {config.SequenceLen - 2} tokens)") +
            (config.ShuffleMergedDatasets ? $", shuffled in a buffer of {(sft && !config.SamplePacking ? DatasetsShuffleBuffer : config.StreamingMultipackBufferSize)} rows" : "") + "; not cached.";
    }
}
