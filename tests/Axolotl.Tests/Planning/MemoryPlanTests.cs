using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Planning;
using Axolotl.Quantization;
using Axolotl.Recipes;
using Axolotl.Tests.Reliability;
using static TorchSharp.torch;

namespace Axolotl.Tests.Planning;

public sealed class MemoryPlanTests : IDisposable
{
    readonly TempDir _dir = TestSetup.TempDir();
    public void Dispose() => _dir.Dispose();

    DecoderConfig Llama1B() => DecoderConfig.FromFolder(ModelFolder("meta-llama-3.2-1B-Instruct.json"));

    /// <summary>A folder holding only config.json: all a plan reads.</summary>
    string ModelFolder(string configName)
    {
        var dir = _dir[configName];
        Directory.CreateDirectory(dir);
        File.Copy(TestSetup.Data("model-configs", configName), Path.Combine(dir, "config.json"), overwrite: true);
        return dir;
    }

    static AxolotlConfig Config(string adapter, string checkpointing = "false", int microBatch = 1, int sequenceLen = 2048) => new()
    {
        BaseModel = "m", Adapter = adapter == "full" ? null : adapter == "qlora" ? AdapterKind.Qlora : AdapterKind.Lora, LoadIn4Bit = adapter == "qlora", LoraR = 16, LoraAlpha = 32,
        LoraTargetLinear = true, GradientCheckpointing = checkpointing == "true" ? GradientCheckpointingMode.True : GradientCheckpointingMode.False, MicroBatchSize = microBatch, SequenceLen = sequenceLen, Bf16 = Bf16Mode.True,
    };

    [Fact]
    public void Qlora_stores_less_than_lora_and_checkpointing_keeps_fewer_activations()
    {
        var arch = Llama1B();
        var lora = MemoryPlan.For(Config("lora"), arch);
        var qlora = MemoryPlan.For(Config("qlora"), arch);
        var full = MemoryPlan.For(Config("full"), arch);
        Assert.True(qlora.PeakBytes < lora.PeakBytes && lora.PeakBytes < full.PeakBytes, $"{qlora.PeakBytes} {lora.PeakBytes} {full.PeakBytes}");
        var checkpointed = MemoryPlan.For(Config("lora", "true"), arch);
        Assert.True(checkpointed.PeakBytes < lora.PeakBytes);
        Assert.Equal(lora.ActivationsWithCheckpointing, checkpointed.Parts.Single(p => p.Name == "activations").Bytes);
        // 1.24B parameters in bf16 (tied embeddings): 2.47 GB of weights for LoRA.
        Assert.InRange(lora.Parts.Single(p => p.Name == "weights").Bytes, 2.4e9, 2.55e9);
        var lines = lora.Describe(100).Split('\n');
        Assert.Matches(@"^predicted peak RSS: \d+\.\d GiB$", lines[^1]);
        Assert.Contains(lines, l => l.StartsWith("predicted time per step: "));
    }

    [Fact]
    public void A_full_fine_tune_plans_the_optimizer_state_its_precision_and_optimizer_hold()
    {
        var arch = Llama1B();
        long parameters = MemoryPlan.For(Config("lora"), arch).Parts.Single(p => p.Name == "weights").Bytes / 2; // bf16
        double PerParameter(Action<AxolotlConfig> change)
        {
            var config = Config("full");
            change(config);
            return (double)MemoryPlan.For(config, arch).Parts.Single(p => p.Name == "gradients, optimizer").Bytes / parameters;
        }
        // bf16 gradient + fp32 master + two fp32 moments; + an fp32 gradient sum when micro-batches are accumulated.
        Assert.InRange(PerParameter(_ => { }), 13.9, 14.1);
        Assert.InRange(PerParameter(c => c.GradientAccumulationSteps = 4), 17.9, 18.1);
        // bfloat16: true: bf16 gradient and moments, no master; 8-bit AdamW: one byte a moment.
        Assert.InRange(PerParameter(c => c.PureBf16 = true), 5.9, 6.1);
        Assert.InRange(PerParameter(c => c.Optimizer = "adamw_8bit"), 7.9, 8.1);
        Assert.InRange(PerParameter(c => { c.PureBf16 = true; c.Optimizer = "adamw_8bit"; }), 3.9, 4.1);
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("qlora")]
    public void Planned_weights_are_the_bytes_the_loaded_model_holds(string adapter)
    {
        using var scope = NewDisposeScope();
        var dir = TestSetup.Data("reference", "models", "tiny-llama");
        var config = Config(adapter);
        config.BaseModel = dir;
        var arch = DecoderConfig.FromFolder(dir);
        var model = ModelLoading.LoadBase(config, arch, ScalarType.BFloat16, ScalarType.BFloat16);
        long held = model.parameters().Sum(p => p.numel() * p.element_size()) + Quantizer.QuantizedWeightBytes(model);
        long planned = MemoryPlan.For(config, arch).Parts.Single(p => p.Name == "weights").Bytes;
        Assert.InRange(planned, held * 0.99, held * 1.01);
    }

    [Fact]
    public void A_run_that_does_not_fit_is_refused_with_a_change_that_would()
    {
        var arch = Llama1B();
        var config = Config("lora", microBatch: 8);
        long need = MemoryPlan.For(config, arch).PeakBytes;
        // Refused only below the prediction less its tolerance: a run the plan overestimates still gets to try.
        long least = (long)(need * (1 - MemoryPlan.Tolerance));
        Assert.Null(MemoryPlan.Refusal(config, arch, least + 1));
        var refusal = MemoryPlan.Refusal(config, arch, least - 1);
        Assert.NotNull(refusal);
        Assert.Contains("gradient_checkpointing: true", refusal);
        var qlora = MemoryPlan.Refusal(config, arch, (long)(MemoryPlan.For(Config("qlora", "true"), arch).PeakBytes * (1 - MemoryPlan.Tolerance)) + 1);
        Assert.Contains("qlora", qlora);
    }

    [Fact]
    public void Glibc_keeps_freed_heap_for_the_loss_chunk_of_a_typical_micro_batch_and_half_the_activations()
    {
        if (Axolotl.Runtime.NativeAllocator.Current != "glibc") return; // jemalloc hands memory back: no such term
        var arch = Llama1B();
        long Part(MemoryPlan plan, string name) => plan.Parts.Single(p => p.Name == name).Bytes;
        var padded = MemoryPlan.For(Config("lora", sequenceLen: 2048), arch);
        Assert.Equal(3 * Part(padded, "loss chunk") + Part(padded, "activations") / 2, Part(padded, "freed heap kept by glibc"));
        // Unpacked rows: the worst micro-batch's head rows are in use at the peak; the heap kept follows the typical one.
        var unpacked = Config("lora", microBatch: 4, sequenceLen: 2048);
        var rows = new RowLengths(Longest: 300, MostTrained: 10, MeanTrained: 2.4);
        var plan = MemoryPlan.For(unpacked, arch, rows);
        Assert.StartsWith("40 rows", plan.Parts.Single(p => p.Name == "loss chunk").Detail);
        long typicalChunk = 10L * 128256 * 12 + 4L * 320 * 2048 * 4; // ceil(4 × 2.4) rows, 4 × 320 tokens' hidden gradient
        Assert.Equal(3 * typicalChunk + Part(plan, "activations") / 2, Part(plan, "freed heap kept by glibc"));
        // Packed rows: the per-layer attention masks are in use, but not counted in the kept heap.
        var packedConfig = Config("lora", sequenceLen: 2048);
        packedConfig.SamplePacking = true;
        var packed = MemoryPlan.For(packedConfig, arch);
        long masks = 2048L * 2048 * 2 * (16 + 1) + 2048L * 2048 * 2 / 2; // 16 layers + 1.5 layers of backward, a bf16 mask each
        Assert.Equal(masks, Part(packed, "activations") - Part(padded, "activations"));
        Assert.Equal(Part(padded, "freed heap kept by glibc"), Part(packed, "freed heap kept by glibc"));
    }

    [Fact]
    public void Unpacked_rows_are_planned_at_the_datas_longest_row_and_packed_rows_at_sequence_len()
    {
        var arch = Llama1B();
        var unpacked = Config("lora", microBatch: 4, sequenceLen: 2048);
        var shortRows = new RowLengths(Longest: 300, MostTrained: 5, MeanTrained: 5);
        var planned = MemoryPlan.For(unpacked, arch, shortRows);
        // Micro-batches are padded to their longest row rounded up to 64: 300 → 320 tokens a row.
        var atThatLength = Config("lora", microBatch: 4, sequenceLen: 320);
        long Part(MemoryPlan plan, string name) => plan.Parts.Single(p => p.Name == name).Bytes;
        Assert.Equal(Part(MemoryPlan.For(atThatLength, arch), "activations"), Part(planned, "activations"));
        Assert.Contains("the data's longest row, 300", planned.Parts.Single(p => p.Name == "activations").Detail);
        // Only trained positions reach the head: 4 rows × 5 trained tokens, fewer than a full chunk.
        Assert.StartsWith("20 rows × 128256", planned.Parts.Single(p => p.Name == "loss chunk").Detail);
        Assert.True(planned.PeakBytes < MemoryPlan.For(unpacked, arch).PeakBytes);
        // A row longer than sequence_len was truncated to it; packed and pad_to_sequence_len rows fill sequence_len whatever the data.
        Assert.Equal(MemoryPlan.For(unpacked, arch).PeakBytes, MemoryPlan.For(unpacked, arch, new RowLengths(5000, 5000, 5000)).PeakBytes);
        var packed = Config("lora", microBatch: 4, sequenceLen: 2048);
        packed.SamplePacking = true;
        Assert.Equal(MemoryPlan.For(packed, arch).PeakBytes, MemoryPlan.For(packed, arch, shortRows).PeakBytes);
        var padded = Config("lora", microBatch: 4, sequenceLen: 2048);
        padded.PadToSequenceLen = true;
        Assert.Equal(MemoryPlan.For(padded, arch).PeakBytes, MemoryPlan.For(padded, arch, shortRows).PeakBytes);
        // The refusal weighs the same rows: refused at sequence_len, accepted at the data's length.
        long budget = (long)(planned.PeakBytes * (1 - MemoryPlan.Tolerance)) + 1;
        Assert.NotNull(MemoryPlan.Refusal(unpacked, arch, (budget, "available memory is")));
        Assert.Null(MemoryPlan.Refusal(unpacked, arch, (budget, "available memory is"), shortRows));
    }
}

[Collection(CapturedConsole.Name)]
public class PlanCommandTests
{
    /// <summary>A LoRA run of a config.json-only model over pre-tokenized rows, with the given batch lines, in dir["config.yml"].</summary>
    static void WriteLoraRun(TempDir dir, string modelConfig, string rows, string batchLines)
    {
        Directory.CreateDirectory(dir["model"]);
        File.Copy(TestSetup.Data("model-configs", modelConfig), Path.Combine(dir["model"], "config.json"));
        File.WriteAllText(dir["data.jsonl"], rows);
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {dir["model"]}
            datasets:
              - path: {dir["data.jsonl"]}
            adapter: lora
            lora_r: 8
            lora_alpha: 16
            lora_target_linear: true
            learning_rate: 0.0001
            output_dir: {dir["out"]}

            """ + batchLines);
    }

    [Fact]
    public void Plan_and_dry_run_print_the_parts_and_the_peak_and_train_refuses_what_cannot_fit()
    {
        using var dir = TestSetup.TempDir();
        WriteLoraRun(dir, "meta-llama-3.1-8B-Instruct.json", "{\"input_ids\": [1, 2, 3]}\n", """
            sequence_len: 8192
            sample_packing: true
            micro_batch_size: 64
            """);
        var plan = InProcessCli.Run("plan", dir["config.yml"]);
        Assert.True(plan.Code == 0, plan.Stderr);
        var lines = plan.Stdout.Trim().Split('\n');
        Assert.Matches(@"^predicted peak RSS: \d+\.\d GiB$", lines[^1]);
        Assert.Contains(lines, l => l.StartsWith("activations"));
        var dryRun = InProcessCli.Run("train", dir["config.yml"], "--dry-run");
        Assert.Equal(lines[^1], dryRun.Stdout.Trim().Split('\n')[^1]);
        Assert.False(Directory.Exists(dir["out"]));
        // 64 × 8192 tokens through an 8B: hundreds of GiB, more than any machine that runs these tests.
        InProcessCli.AssertUserError(InProcessCli.Run("train", dir["config.yml"]), "predicted to peak at", "try ");
    }

    [Fact]
    public void An_unpacked_run_is_planned_and_judged_at_its_datas_row_lengths()
    {
        using var dir = TestSetup.TempDir();
        WriteLoraRun(dir, "meta-llama-3.2-1B-Instruct.json", "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2, 3, 4, 5, 6, 7]}\n", """
            sequence_len: 32768
            micro_batch_size: 8
            """);
        var plan = InProcessCli.Run("plan", dir["config.yml"]);
        Assert.True(plan.Code == 0, plan.Stderr);
        Assert.Contains("8 × 64 tokens (the data's longest row, 7, padded to a multiple of 64)", plan.Stdout);
        Assert.Contains("Data: 2 rows", plan.Stderr);
        double peak = double.Parse(System.Text.RegularExpressions.Regex.Match(plan.Stdout, @"predicted peak RSS: (\d+\.\d) GiB").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        // 8 × 32768 tokens through a 1B would need hundreds of GiB; 8 rows of 7 tokens need the weights and a little more.
        Assert.InRange(peak, 2.5, 8);
        // Train judges the same rows: not refused for memory (it stops at the missing weights instead), and a refusal
        // after the data was read leaves no output_dir behind.
        var train = InProcessCli.Run("train", dir["config.yml"]);
        Assert.NotEqual(0, train.Code);
        Assert.DoesNotContain("predicted to peak", train.Stderr + train.Stdout);
        File.AppendAllText(dir["config.yml"], "\nmax_memory: {cpu: 1GiB}\n");
        if (Directory.Exists(dir["out"])) Directory.Delete(dir["out"], recursive: true);
        InProcessCli.AssertUserError(InProcessCli.Run("train", dir["config.yml"]), "predicted to peak at", "max_memory's budget is 1.0 GiB");
        Assert.False(Directory.Exists(dir["out"]));
    }
}

[Collection(CapturedConsole.Name)]
public class MaxMemoryTests
{
    [Theory]
    [InlineData("20GiB", 20L << 30)]
    [InlineData("512 MiB", 512L << 20)]
    [InlineData("16GB", 16_000_000_000L)]
    [InlineData("8Gb", 1_000_000_000L)] // bits, as transformers reads a lowercase b
    [InlineData("123456", 123456L)]
    public void Sizes_are_read_as_transformers_reads_them(string size, long bytes) =>
        Assert.Equal(bytes, MemoryBudget.ParseSize(size, "cpu"));

    [Fact]
    public void The_cpu_or_only_entry_is_the_budget()
    {
        Assert.Equal(60L << 30, MemoryBudget.FromMaxMemory(new Dictionary<string, string> { ["0"] = "20GiB", ["cpu"] = "60GiB" }));
        Assert.Equal(20L << 30, MemoryBudget.FromMaxMemory(new Dictionary<string, string> { ["0"] = "20GiB" }));
        Assert.Null(MemoryBudget.FromMaxMemory(new Dictionary<string, string> { ["0"] = "20GiB", ["1"] = "20GiB" }));
        Assert.Null(MemoryBudget.FromMaxMemory(null));
    }

    static string Setup(TempDir dir, string maxMemory)
    {
        Directory.CreateDirectory(dir["model"]);
        File.Copy(TestSetup.Data("model-configs", "meta-llama-3.2-1B-Instruct.json"), Path.Combine(dir["model"], "config.json"), overwrite: true);
        File.WriteAllText(dir["data.jsonl"], "{\"input_ids\": [1, 2, 3]}\n");
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {dir["model"]}
            datasets:
              - path: {dir["data.jsonl"]}
            adapter: lora
            lora_r: 8
            lora_alpha: 16
            lora_target_linear: true
            sequence_len: 256
            micro_batch_size: 1
            learning_rate: 0.0001
            output_dir: {dir["out"]}
            max_memory: {maxMemory}
            """);
        return dir["config.yml"];
    }

    [Fact]
    public void Train_refuses_against_max_memory_and_a_malformed_size_is_one_sentence()
    {
        using var dir = TestSetup.TempDir();
        // A 1B LoRA run needs a few GiB: more than a 1 GiB cpu budget, whatever the machine has free.
        var refused = InProcessCli.Run("train", Setup(dir, "{0: 20GiB, cpu: 1GiB}"));
        InProcessCli.AssertUserError(refused, "predicted to peak at", "max_memory's budget is 1.0 GiB", "try ");
        Assert.False(Directory.Exists(dir["out"]));
        var malformed = InProcessCli.Run("plan", Setup(dir, "{cpu: lots}"));
        InProcessCli.AssertUserError(malformed, "config.yml:12:", "max_memory entry cpu: 'lots' is not a size");
    }
}
