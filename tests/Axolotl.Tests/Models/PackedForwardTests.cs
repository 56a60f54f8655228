using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>
/// Packing changes nothing but speed: several samples packed into rows (block-diagonal causal mask, per-sample position
/// ids, first labels masked) give the loss and gradients of the same samples run one by one.
/// </summary>
public class PackedForwardTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static string ModelDir(string name) => name is "tiny-llama" or "tiny-qwen2-randbias"
        ? TestSetup.Data("reference", "models", name)
        : TestSetup.Data("reference", "families", name, "model");

    static CausalLM Model(string name)
    {
        var model = CausalLM.FromPretrained(ModelDir(name), ScalarType.Float32, ScalarType.Float32);
        model.eval(); // no dropout: the two runs must see the same function
        return model;
    }

    /// <summary>Samples of different lengths, longer than mistral's window of 6, with prompts masked in some.</summary>
    static List<Example> Samples(int vocab)
    {
        var random = new Random(11);
        return [.. new[] { 9, 17, 5, 12, 21, 8 }.Select((length, n) =>
        {
            var ids = Enumerable.Range(0, length).Select(_ => random.Next(3, vocab)).ToArray();
            ids[0] = 1;
            var labels = ids.Select((id, i) => n % 2 == 1 && i < length / 3 ? Example.IgnoreIndex : id).ToArray();
            return new Example(ids, labels);
        })];
    }

    // Two rows of 32 (31 and 20 tokens), bins chosen by hand; sample 4 stays out.
    static readonly int[][] Bins = [[0, 1, 2], [3, 5]];
    static readonly int[] Unpacked = [0, 1, 2, 3, 5];

    static Batch Packed(List<Example> samples) => Packing.Collate(samples, Bins, new PackingOptions { SequenceLen = 32 }, padTokenId: 0);

    static long TrainableTokens(List<Example> samples) => Unpacked.Sum(i => samples[i].Labels.Skip(1).Count(l => l != Example.IgnoreIndex));

    /// <summary>Loss (mean over the samples' trainable tokens) and the gradient of every trainable parameter.</summary>
    static (double Loss, Dictionary<string, Tensor> Grads) PackedRun(CausalLM model, Batch batch, long tokens, Tensor? positions = null, Tensor? sequences = null)
    {
        var (sum, counted) = model.LossSumBackward(tensor(batch.InputIds, [batch.Rows, batch.Length]), tensor(batch.Labels, [batch.Rows, batch.Length]),
            1.0 / tokens, positions ?? tensor(batch.PositionIds!, [batch.Rows, batch.Length]), sequences ?? tensor(batch.SequenceIds!, [batch.Rows, batch.Length]));
        Assert.Equal(tokens, counted);
        return (sum / tokens, TakeGrads(model));
    }

    static (double Loss, Dictionary<string, Tensor> Grads) UnpackedRun(CausalLM model, List<Example> samples, long tokens)
    {
        double sum = 0;
        foreach (var e in Unpacked.Select(i => samples[i]))
        {
            var ids = tensor(e.InputIds.Select(x => (long)x).ToArray()).unsqueeze(0);
            var labels = tensor(e.Labels.Select(x => (long)x).ToArray()).unsqueeze(0);
            sum += model.LossSumBackward(ids, labels, 1.0 / tokens).Sum;
        }
        return (sum / tokens, TakeGrads(model));
    }

    static Dictionary<string, Tensor> TakeGrads(CausalLM model)
    {
        var grads = model.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad!.detach().clone());
        foreach (var (_, p) in model.named_parameters()) p.grad?.zero_();
        return grads;
    }

    static double MaxGradDiff(Dictionary<string, Tensor> a, Dictionary<string, Tensor> b)
    {
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        return a.Keys.Max(k => (a[k] - b[k]).abs().max().item<float>());
    }

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    [InlineData("mistral")] // sliding window 6: the window and the sample boundary both cut the mask
    [InlineData("gemma")]
    [InlineData("phi")]    // partial rotary, parallel block
    public void Full_finetune_loss_and_gradients_of_a_packed_batch_equal_the_samples_run_alone(string name)
    {
        using var scope = NewDisposeScope();
        var model = Model(name);
        var samples = Samples((int)model.Config.VocabSize);
        long tokens = TrainableTokens(samples);
        var packed = PackedRun(model, Packed(samples), tokens);
        var alone = UnpackedRun(model, samples, tokens);
        double gradDiff = MaxGradDiff(packed.Grads, alone.Grads);
        output.WriteLine($"{name}: loss {packed.Loss} vs {alone.Loss}; max |grad diff| {gradDiff:E2} over {packed.Grads.Count} tensors");
        Assert.True(Math.Abs(packed.Loss - alone.Loss) < 1e-5, $"loss {packed.Loss} vs {alone.Loss}");
        Assert.True(gradDiff < 1e-5, $"max grad diff {gradDiff}");
        Assert.True(alone.Grads.Values.Max(g => g.abs().max().item<float>()) > 1e-4); // the comparison is not of zeros
    }

    [Fact]
    public void With_gradient_checkpointing_the_packed_gradients_are_the_same()
    {
        // Recomputation in backward must rebuild the same block-diagonal mask and angles.
        using var scope = NewDisposeScope();
        var model = Model("mistral");
        model.train(); // checkpointing acts in training only; the fixture has no dropout
        model.model.GradientCheckpointing = true;
        var samples = Samples((int)model.Config.VocabSize);
        long tokens = TrainableTokens(samples);
        var packed = PackedRun(model, Packed(samples), tokens);
        var alone = UnpackedRun(model, samples, tokens);
        Assert.True(Math.Abs(packed.Loss - alone.Loss) < 1e-5, $"loss {packed.Loss} vs {alone.Loss}");
        Assert.True(MaxGradDiff(packed.Grads, alone.Grads) < 1e-5);
    }

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    public void Lora_gradients_of_a_packed_batch_equal_the_samples_run_alone(string name)
    {
        using var scope = NewDisposeScope();
        var model = Model(name);
        foreach (var p in model.parameters()) p.requires_grad = false;
        // The trained adapter: at init lora_B is zero, which would leave lora_A's gradient zero on both sides.
        Lora.Load(model, TestSetup.Data("reference", "adapters", $"{name}-lora-step20"));
        var samples = Samples((int)model.Config.VocabSize);
        long tokens = TrainableTokens(samples);
        var packed = PackedRun(model, Packed(samples), tokens);
        var alone = UnpackedRun(model, samples, tokens);
        Assert.All(packed.Grads.Keys, k => Assert.Contains(".lora_", k));
        double gradDiff = MaxGradDiff(packed.Grads, alone.Grads);
        output.WriteLine($"{name} LoRA: loss {packed.Loss} vs {alone.Loss}; max |grad diff| {gradDiff:E2}");
        Assert.True(Math.Abs(packed.Loss - alone.Loss) < 1e-5, $"loss {packed.Loss} vs {alone.Loss}");
        Assert.True(gradDiff < 1e-5, $"max grad diff {gradDiff}");
        Assert.True(alone.Grads.Where(g => g.Key.Contains("lora_A")).Max(g => g.Value.abs().max().item<float>()) > 1e-5);
    }

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("mistral")]
    public void Without_the_block_mask_the_packed_loss_differs(string name)
    {
        // The controls that make the equality above mean something: attention across samples changes the result, and
        // so do wrong positions. (Positions counted along the row would not, beyond rounding: RoPE scores depend only
        // on the distance between tokens, and the mask keeps every pair inside one sample.)
        using var scope = NewDisposeScope();
        var model = Model(name);
        var samples = Samples((int)model.Config.VocabSize);
        long tokens = TrainableTokens(samples);
        var batch = Packed(samples);
        var reference = PackedRun(model, batch, tokens).Loss;
        var shape = new long[] { batch.Rows, batch.Length };
        var oneSequence = PackedRun(model, batch, tokens, sequences: ones(shape, dtype: ScalarType.Int64)).Loss;
        var zeroPositions = PackedRun(model, batch, tokens, positions: zeros(shape, dtype: ScalarType.Int64), sequences: tensor(batch.SequenceIds!, shape)).Loss;
        output.WriteLine($"{name}: {reference} block-diagonal, {oneSequence} one sequence per row, {zeroPositions} all positions 0");
        Assert.True(Math.Abs(reference - oneSequence) > 1e-4);
        Assert.True(Math.Abs(reference - zeroPositions) > 2e-5); // a small random model attends weakly; equal runs agree to 1e-7
    }

    [Fact]
    public void Packed_logits_of_each_sample_equal_its_logits_alone_and_sequence_ids_follow_from_position_resets()
    {
        using var scope = NewDisposeScope();
        var model = Model("mistral");
        var samples = Samples((int)model.Config.VocabSize);
        var batch = Packed(samples);
        using var _ = no_grad();
        var ids = tensor(batch.InputIds, [batch.Rows, batch.Length]);
        var positions = tensor(batch.PositionIds!, [batch.Rows, batch.Length]);
        var logits = model.forward(ids, positions, tensor(batch.SequenceIds!, [batch.Rows, batch.Length]));
        // As transformers does, the samples can also be told apart by where the positions restart at 0.
        Assert.Equal(0, (model.forward(ids, positions, null) - logits).abs().max().item<float>());
        for (int r = 0; r < Bins.Length; r++)
        {
            long offset = 0;
            foreach (var index in Bins[r])
            {
                var e = samples[index];
                var alone = model.forward(tensor(e.InputIds.Select(x => (long)x).ToArray()).unsqueeze(0));
                var inRow = logits[r].narrow(0, offset, e.InputIds.Length).unsqueeze(0);
                Assert.True((alone - inRow).abs().max().item<float>() < 1e-5, $"row {r} sample {index}");
                offset += e.InputIds.Length;
            }
        }
    }
}

/// <summary>
/// The training loss's hand-formed cross-entropy gradient against autograd through the plain loss: the same loss and
/// the same parameter gradients, in fp32 (to rounding) and with bf16 weights (to bf16's resolution), for Llama and for
/// Gemma 2's soft-capped, tied head, with a vocabulary large enough that the head runs in several chunks.
/// </summary>
public class LossGradientTests
{
    [Theory]
    [InlineData("llama", false)]
    [InlineData("gemma2", false)]
    [InlineData("llama", true)]
    public void Chunked_loss_backward_equals_autograd_of_the_loss(string family, bool bf16)
    {
        using var scope = NewDisposeScope();
        var json = family == "gemma2" ? NewFamilyTests.Gemma2() : NewFamilyTests.Llama("llama");
        json["vocab_size"] = 200_000; // 40 rows per chunk: the 70 trained positions below take two
        var type = bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var model = CausalLM.Create(NewFamilyTests.FromJson(json), type, type);
        model.InitializeWeights(3);
        model.eval();
        var random = new Random(5);
        var ids = tensor(Enumerable.Range(0, 80).Select(_ => (long)random.Next(3, 200_000)).ToArray(), [2, 40]);
        var labels = ids.clone();
        labels[0, ..9] = tensor(-100L);
        var (sum, tokens) = model.LossSumBackward(ids, labels, 1.0 / 7);
        var chunked = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.detach().to(ScalarType.Float32).clone());
        foreach (var p in model.parameters()) p.grad!.zero_();
        var (reference, referenceTokens) = model.LossSum(ids, labels);
        (reference / 7).backward();
        Assert.Equal(70, tokens);
        Assert.Equal(referenceTokens, tokens);
        Assert.True(Math.Abs(reference.item<float>() - sum) <= (bf16 ? 1e-2 : 1e-5) * Math.Abs(sum), $"loss {sum} vs {reference.item<float>()}");
        foreach (var (key, parameter) in model.named_parameters())
        {
            var expected = parameter.grad!.to(ScalarType.Float32);
            double scale = expected.abs().max().item<float>();
            double diff = (chunked[key] - expected).abs().max().item<float>();
            Assert.True(scale > 0, $"{key}: no gradient");
            Assert.True(diff <= (bf16 ? 3e-2 : 1e-5) * scale, $"{key}: max difference {diff} (gradient scale {scale})");
        }
    }
}
