using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Planning;
using Axolotl.Runtime;
using static TorchSharp.torch;

namespace Axolotl.Tests.Planning;

/// <summary>
/// The plan's per-token activation bytes against what a forward pass really keeps: glibc's bytes in use (heap and
/// mmapped chunks) grow by exactly the tensors autograd holds once the pass returns. Measured process-wide, so these run
/// alone (the collection of tests that need the process to themselves).
/// </summary>
[Collection(GlobalTorchRng.Name)]
public sealed class ActivationMemoryTests
{
    const int Rows = 8, RowTokens = 512, Vocab = 512;
    static readonly string[] Linears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>A small grouped-query Llama: hidden 256, intermediate 704, 4 heads, 2 KV heads.</summary>
    static DecoderConfig Architecture(int layers) => DecoderConfig.FromJson(new JsonObject
    {
        ["model_type"] = "llama", ["vocab_size"] = Vocab, ["hidden_size"] = 256, ["intermediate_size"] = 704,
        ["num_hidden_layers"] = layers, ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["rms_norm_eps"] = 1e-5,
        ["max_position_embeddings"] = 1024,
    }, "test");

    /// <summary>Bytes in use after a training-mode forward pass (its output held) less before it.</summary>
    static long KeptByForward(int layers, string adapter, double dropout)
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        var model = CausalLM.Create(Architecture(layers), ScalarType.BFloat16, ScalarType.BFloat16);
        if (adapter == "lora")
        {
            foreach (var p in model.parameters()) p.requires_grad = false;
            Lora.Apply(model, new LoraSettings { Rank = 8, Alpha = 16, Dropout = dropout, TargetModules = Linears });
        }
        model.train();
        var ids = randint(0, Vocab, [Rows, RowTokens]);
        GC.Collect();
        GC.WaitForPendingFinalizers(); // no finalizer frees native memory inside the window
        long before = Hardware.HeapLiveBytes();
        var hidden = model.model.forward(ids, null, null);
        long after = Hardware.HeapLiveBytes();
        Assert.True(hidden.requires_grad);
        return after - before;
    }

    [Theory]
    [InlineData("lora", 0.0)]
    [InlineData("lora", 0.1)]
    [InlineData("full", 0.0)]
    public void The_plans_bytes_per_token_and_layer_are_what_a_forward_pass_keeps(string adapter, double dropout)
    {
        if (Hardware.HeapStats() is null) return; // no mallinfo2 (not glibc): nothing to read the bytes in use from
        KeptByForward(1, adapter, dropout); // warm-up: libtorch's one-time allocations
        // Two layers more: what each further layer keeps (the first layer differs under LoRA: its input needs no gradient).
        // The median of five pairs: the reading is process-wide, and a thread left behind by an earlier test (a server,
        // a timer, the JIT recompiling in the background) may allocate or free a few MiB inside one window.
        var perLayerReadings = Enumerable.Range(0, 5)
            .Select(_ => (KeptByForward(3, adapter, dropout) - KeptByForward(1, adapter, dropout)) / 2).Order().ToList();
        long perLayer = perLayerReadings[2];
        var config = new AxolotlConfig
        {
            BaseModel = "m", Adapter = adapter == "lora" ? AdapterKind.Lora : null, LoraR = 8, LoraAlpha = 16, LoraDropout = dropout,
            LoraTargetModules = [.. Linears], MicroBatchSize = Rows, SequenceLen = RowTokens, PadToSequenceLen = true, Bf16 = Bf16Mode.True,
        };
        long planned = MemoryPlan.For(config, Architecture(3)).SavedBytesPerTokenLayer * Rows * RowTokens;
        Assert.True(perLayer > 0.95 * planned && perLayer < 1.05 * planned,
            $"a layer kept {perLayer:N0} bytes, the plan says {planned:N0}; readings {string.Join(", ", perLayerReadings.Select(r => r.ToString("N0")))}");
    }
}
