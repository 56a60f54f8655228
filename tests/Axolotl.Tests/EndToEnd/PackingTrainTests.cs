using System.Text.Json.Nodes;

namespace Axolotl.Tests.EndToEnd;

/// <summary>
/// `axolotl train` with sample_packing against the same run unpacked. Step losses of the two differ in general only
/// because packing groups other examples into each micro-batch; fed the same examples per step (here every step sees
/// all four: two packed rows of 128 tokens, or one unpacked batch of four), the whole trajectory is the same.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class PackingTrainTests
{
    static string Config(TempDir dir, bool packing, string adapterLines) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        datasets:
          - path: {TestSetup.WriteReferenceRows(dir, i => new[] { 40, 64, 23, 51 }[i])}
            ds_type: json
        sequence_len: 128
        {adapterLines}
        sample_packing: {(packing ? "true" : "false")}
        micro_batch_size: {(packing ? 2 : 4)}
        num_epochs: 3
        learning_rate: 0.001
        optimizer: adamw_torch
        lr_scheduler: constant
        max_grad_norm: 0
        logging_steps: 1
        bf16: false
        save_strategy: "no"
        output_dir: {dir[packing ? "packed" : "unpacked"]}
        """;

    static JsonArray History(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray();

    [Theory]
    [InlineData("")]
    [InlineData("adapter: lora\nlora_model_dir: LORA")]
    public void A_packed_run_trains_as_the_unpacked_run_of_the_same_batches(string adapterLines)
    {
        using var dir = TestSetup.TempDir();
        adapterLines = adapterLines.Replace("LORA", TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20"));
        File.WriteAllText(dir["packed.yml"], Config(dir, true, adapterLines));
        File.WriteAllText(dir["unpacked.yml"], Config(dir, false, adapterLines));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["packed.yml"]]));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["unpacked.yml"]]));

        var packed = History(dir["packed"]).Where(e => e!["loss"] != null).ToList();
        var unpacked = History(dir["unpacked"]).Where(e => e!["loss"] != null).ToList();
        Assert.Equal(3, packed.Count);
        Assert.Equal(unpacked.Count, packed.Count);
        for (int i = 0; i < packed.Count; i++)
            foreach (var key in new[] { "loss", "grad_norm" })
            {
                double p = (double)packed[i]![key]!, u = (double)unpacked[i]![key]!;
                Assert.True(Math.Abs(p - u) < 1e-5 * Math.Max(1, Math.Abs(u)), $"step {i + 1} {key}: packed {p} vs unpacked {u}");
            }
        Assert.True((double)packed[2]!["loss"]! < (double)packed[0]!["loss"]!);
    }

    [Fact]
    public void A_packed_run_resumed_from_a_checkpoint_continues_the_same_batches()
    {
        // Rows of 20-50 tokens in bins of 64: three packed micro-batches per epoch, nine steps; checkpoint-4 lies in epoch 2.
        using var dir = TestSetup.TempDir();
        string Config(string output, string extra) => $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            datasets:
              - path: {TestSetup.WriteReferenceRows(dir, i => 20 + 10 * i)}
            sequence_len: 64
            sample_packing: true
            micro_batch_size: 1
            num_epochs: 3
            learning_rate: 0.001
            logging_steps: 1
            bf16: false
            save_steps: 2
            output_dir: {output}
            {extra}
            """;
        File.WriteAllText(dir["a.yml"], Config(dir["a"], ""));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["a.yml"]]));
        var full = History(dir["a"]).Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();
        Assert.Equal(9, full.Length);
        File.WriteAllText(dir["b.yml"], Config(dir["b"], $"resume_from_checkpoint: {Path.Combine(dir["a"], "checkpoint-4")}"));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["b.yml"]]));
        Assert.Equal(full, History(dir["b"]).Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray());
    }
}
