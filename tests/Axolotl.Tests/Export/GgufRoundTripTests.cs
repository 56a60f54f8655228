using Axolotl.Export;
using Axolotl.Models;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Tests.Export;

/// <summary>Exported files read back by this project's own GGUF reader (no external tools).</summary>
public class GgufRoundTripTests
{
    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    [InlineData("mistral")]
    [InlineData("gemma")]
    [InlineData("phi")]
    [InlineData("qwen3")]
    [InlineData("gemma2")]
    [InlineData("phi3")]
    public void F32_export_reads_back_to_the_same_weights_and_logits(string family)
    {
        using var dir = TestSetup.TempDir();
        var folder = GgufFixtures.Folder(dir, family);
        var path = GgufFixtures.Export(dir, folder, GgufOutType.F32);
        var (original, _) = GgufFixtures.Load(folder);
        var architecture = DecoderConfig.FromFolder(path);
        Assert.Equal(original.Config.ModelType == "mistral" ? "llama" : original.Config.ModelType, architecture.ModelType);
        var reread = CausalLM.Create(architecture, ScalarType.Float32, ScalarType.Float32);
        reread.LoadWeights(path);
        var expected = original.BaseStateDict().ToDictionary(p => p.Key, p => p.Value);
        foreach (var (name, value) in reread.BaseStateDict())
        {
            // Gemma's norms are stored as 1 + w, and (1 + w) - 1 may round in the last bit.
            bool gemmaNorm = family.StartsWith("gemma") && name.EndsWith("norm.weight");
            Assert.True(gemmaNorm ? value.allclose(expected[name], rtol: 0, atol: 1e-7) : Same(value, expected[name]), $"{family}: {name} differs after the round trip");
        }
        using var ids = tensor(new long[] { 1, 5, 9, 200, 17, 3, 88, 400 }).unsqueeze(0);
        Assert.True(reread.forward(ids).allclose(original.forward(ids), rtol: 0, atol: 1e-5));
    }

    [Theory]
    [InlineData("F16", ScalarType.Float16)]
    [InlineData("BF16", ScalarType.BFloat16)]
    public void Half_precision_exports_round_every_matrix_as_torch_does(string typeName, ScalarType dtype)
    {
        var type = Enum.Parse<GgufOutType>(typeName);
        using var dir = TestSetup.TempDir();
        var folder = GgufFixtures.Folder(dir, "tiny-qwen2-randbias");
        var path = GgufFixtures.Export(dir, folder, type);
        var (original, _) = GgufFixtures.Load(folder);
        var reread = CausalLM.Create(DecoderConfig.FromFolder(path), ScalarType.Float32, ScalarType.Float32);
        reread.LoadWeights(path);
        var expected = original.BaseStateDict().ToDictionary(p => p.Key, p => p.Value);
        foreach (var (name, value) in reread.BaseStateDict())
        {
            // Vectors (norms, biases) stay F32, as llama.cpp's converter keeps them.
            var want = value.dim() == 1 ? expected[name] : expected[name].to(dtype).to(ScalarType.Float32);
            Assert.True(Same(value, want), $"{type}: {name}");
        }
    }

    [Fact]
    public void Q8_0_export_keeps_vectors_exact_and_matrices_within_a_step()
    {
        using var dir = TestSetup.TempDir();
        var folder = GgufFixtures.Folder(dir, "tiny-llama");
        var path = GgufFixtures.Export(dir, folder, GgufOutType.Q8_0);
        using (var file = new GgufReader(path))
        {
            Assert.Equal(GgmlType.Q8_0, file.Tensors["blk.0.attn_q.weight"].Type);
            Assert.Equal(GgmlType.Q8_0, file.Tensors["token_embd.weight"].Type);
            Assert.Equal(GgmlType.F32, file.Tensors["blk.0.attn_norm.weight"].Type);
            Assert.Equal(7u, file.Metadata["general.file_type"].AsUInt("general.file_type"));
        }
        var (original, _) = GgufFixtures.Load(folder);
        var reread = CausalLM.Create(DecoderConfig.FromFolder(path), ScalarType.Float32, ScalarType.Float32);
        reread.LoadWeights(path);
        var expected = original.BaseStateDict().ToDictionary(p => p.Key, p => p.Value);
        foreach (var (name, value) in reread.BaseStateDict())
        {
            var want = expected[name];
            if (value.dim() == 1) { Assert.True(Same(value, want), name); continue; }
            // Per 32-weight block: |error| ≤ (0.5 + fp16 scale rounding) · amax / 127.
            var blocks = want.reshape(-1, 32);
            var step = blocks.abs().amax([1], keepdim: true) / 127;
            var error = (value.reshape(-1, 32) - blocks).abs();
            Assert.True(error.le(step * 0.57 + 1e-8).all().item<bool>(), $"q8_0: {name} off by more than a step");
        }
    }

    [Fact]
    public void Q4_0_export_keeps_the_head_at_q8_0()
    {
        using var dir = TestSetup.TempDir();
        var folder = GgufFixtures.Folder(dir, "gemma"); // tied: token_embd is the head
        var path = GgufFixtures.Export(dir, folder, GgufOutType.Q4_0);
        using var file = new GgufReader(path);
        Assert.Equal(GgmlType.Q8_0, file.Tensors["token_embd.weight"].Type);
        Assert.Equal(GgmlType.Q4_0, file.Tensors["blk.0.ffn_up.weight"].Type);
        Assert.Equal(2u, file.Metadata["general.file_type"].AsUInt("general.file_type"));
        Assert.False(file.Tensors.ContainsKey("output.weight"));
    }

    [Fact]
    public void Tokenizer_metadata_lists_every_token_with_its_type_and_the_special_ids()
    {
        using var dir = TestSetup.TempDir();
        var folder = GgufFixtures.Folder(dir, "tiny-qwen2-randbias");
        var path = GgufFixtures.Export(dir, folder, GgufOutType.F32);
        var tokenizer = Tokenizer.FromFolder(folder);
        using var file = new GgufReader(path);
        Assert.Equal("gpt2", file.GetString("tokenizer.ggml.model"));
        Assert.Equal("gpt-2", file.GetString("tokenizer.ggml.pre"));
        var tokens = (string[])file.Metadata["tokenizer.ggml.tokens"].Value;
        Assert.Equal(512, tokens.Length);
        for (int i = 0; i < tokenizer.VocabSize; i++) Assert.Equal(tokenizer.IdToToken(i), tokens[i]);
        var types = (int[])file.Metadata["tokenizer.ggml.token_type"].Value;
        Assert.Equal(3, types[tokenizer.TokenToId("<|im_end|>")!.Value]); // special added token: control
        Assert.Equal(1, types[tokenizer.TokenToId("Ġt")!.Value]);
        var merges = (string[])file.Metadata["tokenizer.ggml.merges"].Value;
        Assert.Equal("Ġ t", merges[0]);
        Assert.Equal((uint)tokenizer.EosTokenId!.Value, file.Metadata["tokenizer.ggml.eos_token_id"].AsUInt("eos"));
        Assert.False((bool)file.Metadata["tokenizer.ggml.add_bos_token"].Value); // tok-tiny512 adds no BOS
        Assert.Contains("<|im_start|>", file.GetString("tokenizer.chat_template"));
    }

    [Fact]
    public void SentencePiece_vocabulary_from_tokenizer_json_scores_merges_in_order()
    {
        using var dir = TestSetup.TempDir();
        var path = GgufFixtures.Export(dir, GgufFixtures.Quickstart, GgufOutType.Q8_0);
        var tokenizer = Tokenizer.FromFolder(GgufFixtures.Quickstart);
        using var file = new GgufReader(path);
        Assert.Equal("llama", file.GetString("tokenizer.ggml.model"));
        var tokens = (string[])file.Metadata["tokenizer.ggml.tokens"].Value;
        var scores = (float[])file.Metadata["tokenizer.ggml.scores"].Value;
        var types = (int[])file.Metadata["tokenizer.ggml.token_type"].Value;
        Assert.Equal(32000, tokens.Length);
        Assert.Equal("▁the", tokens[tokenizer.TokenToId("▁the")!.Value]);
        Assert.Equal(6, types[tokenizer.TokenToId("<0x0A>")!.Value]); // byte
        Assert.Equal(2, types[0]); // <unk>
        Assert.Equal(3, types[1]); // <s>: control
        // "▁t" (an early merge) outranks "▁the", which needs it first.
        Assert.True(scores[tokenizer.TokenToId("▁t")!.Value] > scores[tokenizer.TokenToId("▁the")!.Value]);
        Assert.True((bool)file.Metadata["tokenizer.ggml.add_bos_token"].Value);
        Assert.Equal(1u, file.Metadata["tokenizer.ggml.bos_token_id"].AsUInt("bos"));
    }

    [Fact]
    public void Llama_cpp_converted_file_reads_with_its_metadata_and_tokens()
    {
        // llama-2-tiny-random.gguf was written by llama.cpp's own converter (F16 matrices, F32 norms).
        var path = TestSetup.Data("gguf", "llama-2-tiny-random.gguf");
        using var file = new GgufReader(path);
        Assert.Equal(3u, file.Version);
        Assert.Equal(12, file.Tensors.Count);
        Assert.Equal("llama", file.GetString("general.architecture"));
        var tokens = (string[])file.Metadata["tokenizer.ggml.tokens"].Value;
        var llama2 = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));
        Assert.Equal(32000, tokens.Length);
        foreach (var id in new[] { 0, 1, 2, 3, 259, 1576, 31999 }) Assert.Equal(llama2.IdToToken(id), tokens[id]);
        var config = DecoderConfig.FromFolder(path);
        Assert.Equal((8, 1, 2, 32), (config.HiddenSize, config.NumLayers, config.NumHeads, config.IntermediateSize));
        var model = CausalLM.Create(config, ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(path);
        using var ids = tensor(new long[] { 1, 15043, 3186 }).unsqueeze(0);
        Assert.False(model.forward(ids).isnan().any().item<bool>());
    }

    [Fact]
    public void Truncated_or_foreign_files_are_refused_in_one_sentence()
    {
        using var dir = TestSetup.TempDir();
        var bytes = File.ReadAllBytes(TestSetup.Data("gguf", "llama-2-tiny-random.gguf"));
        File.WriteAllBytes(dir["cut.gguf"], bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<UserError>(() => { using var f = new GgufReader(dir["cut.gguf"]); });
        Assert.Contains("truncated", e.Message);
        File.WriteAllBytes(dir["text.gguf"], "hello, not a model at all"u8.ToArray());
        Assert.Contains("not a GGUF file", Assert.Throws<UserError>(() => { using var f = new GgufReader(dir["text.gguf"]); }).Message);
    }
}
