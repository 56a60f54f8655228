using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Data;

/// <summary>
/// pretraining_dataset as Axolotl's streaming encoders shape it (src/axolotl/utils/data/streaming.py), checked against
/// the tokenizer's own encodings of each text rather than numbers recorded from this code.
/// </summary>
public class PretrainingDatasetTests
{
    static readonly Tokenizer Llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));
    static readonly string DataFile = TestSetup.Data("data-text", "c4_demo_head12.jsonl");
    static readonly List<string> Texts = RowReader.Read(DataFile, null).Select(r => (string)r.Fields["text"]!).ToList();
    static int Bos => Llama2.BosTokenId!.Value;
    static int Eos => Llama2.EosTokenId!.Value;
    const int Pad = 0; // the Llama-2 tokenizer has no pad token; any id not otherwise used shows where padding went

    static PretrainingStream Stream(PretrainingOptions o, Func<IEnumerable<Row>>? rows = null) =>
        new(rows ?? (() => RowReader.Stream(new DatasetConfig { Path = DataFile })), () => Llama2, o);

    static PretrainingOptions Options(int sequenceLen, bool concatenate = false, int buffer = 10_000, bool shuffle = false, int micro = 1) =>
        new() { SequenceLen = sequenceLen, Concatenate = concatenate, BufferSize = buffer, Shuffle = shuffle, MicroBatchSize = micro, PadTokenId = Pad };

    /// <summary>tokenizer(text, truncation=True, max_length=max) for Llama-2: BOS, then the text's own tokens cut to fit.</summary>
    static int[] Truncated(string text, int max) => [Bos, .. Llama2.Encode(text, addSpecialTokens: false).Take(max - 1)];

    static int[] Row(Batch b, int r) => b.InputIds.Skip(r * b.Length).Take(b.Length).Select(x => (int)x).ToArray();
    static int[] Labels(Batch b, int r) => b.Labels.Skip(r * b.Length).Take(b.Length).Select(x => (int)x).ToArray();

    [Fact]
    public void Without_concatenation_each_text_is_one_row_truncated_to_sequence_len_minus_2()
    {
        var batches = Stream(Options(256)).Batches(StreamPosition.Start).Take(Texts.Count).Select(b => b.Batch).ToList();
        for (int i = 0; i < Texts.Count; i++)
        {
            var expected = Truncated(Texts[i], 254);
            Assert.Equal(expected, Row(batches[i], 0));
            Assert.Equal(expected, Labels(batches[i], 0));
        }
        // The data's texts are long enough that truncation happened, and short enough that one did not.
        Assert.Contains(batches, b => b.Length == 254);
        Assert.Contains(batches, b => b.Length < 254);
    }

    /// <summary>Axolotl's buffer rule, written out: a text (+ EOS + pad) joins the block while it fits, else the block is padded out.</summary>
    static List<(int[] Ids, int[] Labels)> ExpectedBlocks(IEnumerable<string> texts, int length)
    {
        var blocks = new List<(int[], int[])>();
        var ids = new List<int>();
        var labels = new List<int>();
        void Close()
        {
            while (ids.Count < length) { ids.Add(Pad); labels.Add(-100); }
            blocks.Add((ids.ToArray(), labels.ToArray()));
            ids.Clear(); labels.Clear();
        }
        foreach (var text in texts)
        {
            var piece = Truncated(text, length - 2);
            if (ids.Count + piece.Length + 2 > length) Close();
            ids.AddRange([.. piece, Eos, Pad]);
            labels.AddRange([.. piece, Eos, -100]);
        }
        if (ids.Count > 0) Close();
        return blocks;
    }

    [Theory]
    [InlineData(10_000)]
    [InlineData(5)]
    [InlineData(3)]
    public void Concatenation_packs_whole_texts_with_eos_and_an_untrained_pad_into_blocks_of_sequence_len(int buffer)
    {
        const int length = 512;
        // Each buffer of rows is encoded on its own, so its last block is padded out (12 rows: buffers of 5, 5 and 2).
        var expected = Texts.Chunk(buffer).SelectMany(chunk => ExpectedBlocks(chunk, length)).ToList();
        var blocks = Stream(Options(length, concatenate: true, buffer: buffer)).Batches(StreamPosition.Start).Take(expected.Count).Select(b => b.Batch).ToList();
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(length, blocks[i].Length);
            Assert.Equal(expected[i].Ids, Row(blocks[i], 0));
            Assert.Equal(expected[i].Labels, Labels(blocks[i], 0));
        }
        // The next block is the first of the data's second pass: the stream starts over.
        var next = Stream(Options(length, concatenate: true, buffer: buffer)).Batches(StreamPosition.Start).ElementAt(expected.Count);
        Assert.Equal(1, next.After.Epoch);
        Assert.Equal(expected[0].Ids, Row(next.Batch, 0));
        if (buffer < Texts.Count)
            Assert.False(expected.Select(b => b.Ids).SequenceEqual(ExpectedBlocks(Texts, length).Select(b => b.Ids), new ArrayEquality()), "buffer boundaries change the blocks");
    }

    sealed class ArrayEquality : IEqualityComparer<int[]>
    {
        public bool Equals(int[]? a, int[]? b) => a!.SequenceEqual(b!);
        public int GetHashCode(int[] a) => a.Length;
    }

    [Fact]
    public void In_a_concatenated_block_pads_are_masked_keys_while_the_texts_attend_across_each_other()
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        var tiny = Tokenizer.FromFolder(TestSetup.Data("tok-tiny512"));
        var model = Axolotl.Models.CausalLM.FromPretrained(TestSetup.Data("reference", "models", "tiny-llama"), TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.ScalarType.Float32);
        model.eval();
        Row Text(string t) => new(new JsonObject { ["text"] = t }, "mem", 1);
        var stream = new PretrainingStream(() => [Text("The cat sat on the mat."), Text("A dog ran far away from home.")], () => tiny,
            Options(40, concatenate: true) with { PadTokenId = tiny.PadTokenId!.Value });
        var block = stream.Batches(StreamPosition.Start).First().Batch;
        int first = tiny.Encode("The cat sat on the mat.").Count;
        Assert.Equal(-100L, block.Labels[first + 1]); // text, EOS, pad, next text
        TorchSharp.torch.Tensor Logits(long[] ids) => model.forward(TorchSharp.torch.tensor(ids, [1, block.Length]),
            TorchSharp.torch.tensor(block.PositionIds!, [1, block.Length]), TorchSharp.torch.tensor(block.SequenceIds!, [1, block.Length]));
        var logits = Logits(block.InputIds);
        var real = Enumerable.Range(0, block.Length).Where(t => block.Labels[t] != -100).Select(t => (long)t).ToArray();
        var realIndex = TorchSharp.torch.tensor(real);
        // Another pad id changes nothing a trained token computes: no trained token attends to a pad.
        var otherPads = block.InputIds.Select((id, t) => block.Labels[t] == -100 ? 7L : id).ToArray();
        Assert.True(Logits(otherPads).index_select(1, realIndex).allclose(logits.index_select(1, realIndex), 1e-5, 1e-6));
        // Another first text changes what the second text computes: attention crosses texts, as transformers' does.
        var otherFirst = (long[])block.InputIds.Clone();
        otherFirst[1] = otherFirst[1] == 100 ? 101 : 100;
        var second = TorchSharp.torch.tensor(real.Where(t => t > first + 1).ToArray());
        Assert.False(Logits(otherFirst).index_select(1, second).allclose(logits.index_select(1, second), 1e-5, 1e-6));
        // The pad after the first text predicts the second's first token (trained): as a query it sees the text before it.
        var pad = TorchSharp.torch.tensor(new long[] { first + 1 });
        Assert.False(Logits(otherFirst).index_select(1, pad).allclose(logits.index_select(1, pad), 1e-5, 1e-6));
    }

    [Fact]
    public void A_row_without_text_fails_with_its_line_or_is_skipped_and_counted()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["d.jsonl"], "{\"text\": \"one\"}\n{\"body\": \"two\"}\n{\"text\": \"three\"}\n");
        PretrainingStream Over(bool skip) => new(() => RowReader.Stream(new DatasetConfig { Path = dir["d.jsonl"] }), () => Llama2,
            Options(64), bad: new BadRows(skip));
        using (var failing = Over(skip: false).From(0))
        {
            Assert.True(failing.MoveNext());
            var e = Assert.ThrowsAny<UserError>(() => failing.MoveNext());
            Assert.Contains("d.jsonl, line 2: missing field 'text'", e.Message);
        }
        var skipping = Over(skip: true);
        var rows = skipping.Batches(StreamPosition.Start).Take(2).Select(b => Row(b.Batch, 0)).ToList();
        Assert.Equal([Truncated("one", 62), Truncated("three", 62)], rows);
        Assert.Equal(("missing field", 1), (skipping.SkippedRows.Single().Reason, skipping.SkippedRows.Single().Count));
    }

    [Fact]
    public void Skip_leaves_out_the_first_rows()
    {
        var o = Options(128) with { Skip = 3 };
        var first = Stream(o).Batches(StreamPosition.Start).First().Batch;
        Assert.Equal(Truncated(Texts[3], 126), Row(first, 0));
    }

    [Fact]
    public void A_stream_reads_no_more_rows_than_the_batches_taken_need()
    {
        int pulled = 0;
        IEnumerable<Row> Counted() => RowReader.Stream(new DatasetConfig { Path = DataFile }).Select(r => { pulled++; return r; });
        // Synchronously: three one-text rows pull three rows.
        _ = Stream(Options(64, micro: 1), Counted).Batches(StreamPosition.Start).Take(3).ToList();
        Assert.Equal(3, pulled);
        // A block is known to be complete only when the next text does not fit: at most one row more.
        pulled = 0;
        var blocks = Stream(Options(512, concatenate: true), Counted).Batches(StreamPosition.Start).Take(2).ToList();
        int texts = ExpectedBlocks(Texts, 512).Take(2).Sum(b => b.Ids.Count(id => id == Eos));
        Assert.InRange(pulled, texts, texts + 1);
        Assert.True(pulled < Texts.Count);
        // Through the trainer's enumerator: nothing is read ahead of the batch handed out.
        pulled = 0;
        using (var e = Stream(Options(64), Counted).From(0))
        {
            Assert.True(e.MoveNext());
            Assert.Equal(1, pulled);
        }
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void A_stream_resumed_from_a_saved_position_continues_exactly(bool concatenate, bool packed)
    {
        // Small buffers and the shuffle on, so a resume lands inside a buffer, across buffers and across passes.
        var o = Options(128, concatenate, buffer: 4, shuffle: true, micro: 2) with
        {
            Packing = packed ? new PackingOptions { SequenceLen = 128, MicroBatchSize = 2, RealBatches = false } : null,
        };
        var straight = Stream(o).Batches(StreamPosition.Start).Take(100).ToList();
        Assert.Contains(straight, b => b.After.Epoch > 0);
        foreach (int k in new[] { 1, 5, 13, 22, 77 })
        {
            using var dir = TestSetup.TempDir();
            var first = Stream(o);
            using (var e = first.From(0))
                for (int i = 0; i < k; i++) Assert.True(e.MoveNext());
            Assert.Equal(straight[k - 1].After, first.Consumed);
            first.SavePosition(dir.Path);

            var resumed = Stream(o);
            resumed.ResumeFrom(dir.Path);
            using var rest = resumed.From(k);
            for (int i = k; i < straight.Count; i++)
            {
                Assert.True(rest.MoveNext());
                Assert.Equal(straight[i].Batch.InputIds, rest.Current.InputIds);
                Assert.Equal(straight[i].Batch.Labels, rest.Current.Labels);
                Assert.Equal(straight[i].Batch.PositionIds, rest.Current.PositionIds);
            }
        }
        // Without a saved position the same batches come by regenerating from the start.
        using var regenerated = Stream(o).From(7);
        Assert.True(regenerated.MoveNext());
        Assert.Equal(straight[7].Batch.InputIds, regenerated.Current.InputIds);
    }

    sealed class TextRow
    {
        [System.Text.Json.Serialization.JsonPropertyName("text")] public string Text { get; set; } = "";
        [System.Text.Json.Serialization.JsonPropertyName("n")] public long N { get; set; }
    }

    [Fact]
    public async Task Streamed_files_give_the_rows_a_whole_read_gives()
    {
        using var dir = TestSetup.TempDir();
        // Parquet with several row groups, read one group at a time.
        var rows = Enumerable.Range(0, 10).Select(i => new TextRow { Text = $"row {i}", N = i }).ToList();
        await using (var fs = File.Create(dir["d.parquet"]))
            await Parquet.Serialization.ParquetSerializer.SerializeAsync(rows, fs, new Parquet.ParquetOptions { RowGroupSize = 3 });
        await using (var fs = File.OpenRead(dir["d.parquet"]))
        await using (var reader = await Parquet.ParquetReader.CreateAsync(fs))
            Assert.True(reader.RowGroupCount > 1, $"{reader.RowGroupCount} row group(s)");
        // Text with CRLF endings, an empty line and no final newline; JSON Lines with a blank line.
        File.WriteAllText(dir["d.txt"], "first\r\n\nthird\nlast");
        File.WriteAllText(dir["d.jsonl"], "{\"text\": \"a\"}\n\n{\"text\": \"b\", \"n\": 2}\n");
        foreach (var file in new[] { "d.parquet", "d.txt", "d.jsonl" })
        {
            var d = new DatasetConfig { Path = dir[file] };
            var whole = RowReader.Read(d);
            var streamed = RowReader.Stream(d).ToList();
            Assert.Equal(whole.Select(r => (r.Fields.ToJsonString(), r.Where)), streamed.Select(r => (r.Fields.ToJsonString(), r.Where)));
        }
        Assert.Equal(10, RowReader.Stream(new DatasetConfig { Path = dir["d.parquet"] }).Count());
        Assert.Equal(4, RowReader.Stream(new DatasetConfig { Path = dir["d.txt"] }).Count());
        var slice = Assert.Throws<UserError>(() => RowReader.Stream(new DatasetConfig { Path = dir["d.txt"], Split = "train[:5]" }));
        Assert.Contains("use 'skip'", slice.Message);
    }

    [Fact]
    public void Overflowing_windows_follow_tokenizers_truncation_with_a_stride()
    {
        var text = Texts[5];
        var content = Llama2.Encode(text, addSpecialTokens: false);
        Assert.True(content.Count > 40);
        // max_length 15 with one special token: windows of 14 of the text's tokens, each starting 14 − 7 after the last.
        var windows = PretrainingStream.Overflowing(Llama2, text, 15, 7);
        for (int w = 0; w < windows.Count; w++)
            Assert.Equal([Bos, .. content.Skip(7 * w).Take(14)], windows[w]);
        Assert.Equal(content.Count, 7 * (windows.Count - 1) + windows[^1].Length - 1);
        Assert.True(7 * (windows.Count - 2) + 14 < content.Count, "no window after the one that reaches the end");
    }

    [Fact]
    public void Sample_packing_keeps_each_window_whole_with_positions_restarting()
    {
        const int length = 64;
        var o = Options(length, buffer: 100) with { Packing = new PackingOptions { SequenceLen = length, MicroBatchSize = 2, RealBatches = false } };
        var batches = Stream(o).Batches(StreamPosition.Start).TakeWhile(b => b.After.Epoch == 0).Select(b => b.Batch).ToList();
        // Every window of every text (type pretrain: max_length 63, stride 31, EOS appended) appears once, whole.
        var expected = Texts.SelectMany(t => PretrainingStream.Overflowing(Llama2, t, length - 1, 31)).Select(w => string.Join(",", w.Append(Eos))).Order().ToList();
        var found = new List<string>();
        foreach (var b in batches)
        {
            Assert.Equal(1, b.Rows);
            Assert.True(b.Length <= 128 && b.Length % 64 == 0, $"a row of {b.Length}");
            var ids = Row(b, 0);
            int start = 0;
            for (int t = 1; t <= ids.Length; t++)
                if (t == ids.Length || b.PositionIds![t] == 0)
                {
                    if (b.SequenceIds![start] != 0) found.Add(string.Join(",", ids[start..t]));
                    start = t;
                }
        }
        Assert.Equal(expected, found.Order().ToList());
    }

    [Fact]
    public void Config_reads_a_mapping_or_a_list_and_needs_max_steps()
    {
        const string head = "base_model: some/model\nlearning_rate: 0.001\n";
        var c = ConfigLoader.Parse(head + "max_steps: 5\npretraining_dataset:\n  path: c4.jsonl\n  text_column: body\n  skip: 10\n", "cfg.yml");
        Assert.Equal(("c4.jsonl", "body", 10, "pretrain"), (c.PretrainingDataset[0].Path, c.PretrainingDataset[0].TextColumn, c.PretrainingDataset[0].Skip, c.PretrainingDataset[0].Type));
        Assert.True(c.Streaming);
        c = ConfigLoader.Parse(head + "max_steps: 5\nstreaming: true\npretraining_dataset:\n  - path: a.jsonl\n    type: alpaca\n  - path: b.jsonl\n", "cfg.yml");
        Assert.Equal("alpaca", c.PretrainingDataset[0].Type);
        Assert.Contains(c.Warnings, w => w.Contains("only the first is streamed"));

        var e = Assert.ThrowsAny<UserError>(() => ConfigLoader.Parse(head + "pretraining_dataset:\n  - path: a.jsonl\n", "cfg.yml"));
        Assert.StartsWith("cfg.yml:3:1: max_steps must be set with pretraining_dataset", e.Message);
        Assert.Contains("dataset_exact_deduplication is not available for streaming datasets",
            Assert.ThrowsAny<UserError>(() => ConfigLoader.Parse(head + "max_steps: 5\ndataset_exact_deduplication: true\npretraining_dataset:\n  - path: a.jsonl\n", "cfg.yml")).Message);
        // text_column and skip belong to pretraining entries; streaming alone is Axolotl's streamed SFT path (implemented).
        var refused = Assert.Throws<UnsupportedKeysError>(() => ConfigLoader.Parse(head + "max_steps: 5\nstreaming: true\ndatasets:\n  - path: a.jsonl\n    type: alpaca\n    skip: 3\n", "cfg.yml"));
        Assert.Equal(["datasets[0].skip"], refused.Keys);
    }
}
