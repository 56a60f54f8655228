using System.Text.Json.Nodes;
using Axolotl.IO;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>Checkpoints and exact resume: a resumed run continues the same loss stream and ends on the same weights.</summary>
[Collection(GlobalTorchRng.Name)]
public class ResumeTests
{
    static string Config(TempDir dir, string outputDir, string extra, bool lora = true, bool bf16 = false) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        datasets:
          - path: {WriteData(dir)}
        sequence_len: 64
        {(lora ? "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0.1\nlora_target_modules: [q_proj, v_proj]" : "")}
        micro_batch_size: 1
        gradient_accumulation_steps: 2
        num_epochs: 3
        learning_rate: 0.001
        lr_scheduler: cosine
        warmup_steps: 1
        logging_steps: 1
        bf16: {(bf16 ? "true" : "false")}
        save_steps: 2
        output_dir: {outputDir}
        {extra}
        """;

    static string WriteData(TempDir dir) => TestSetup.WriteReferenceRows(dir, i => 20 + 10 * i);

    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    static void AssertSameTensors(string fileA, string fileB)
    {
        using var scope = NewDisposeScope();
        var a = SafetensorsFile.Open(fileA);
        var b = SafetensorsFile.Open(fileB);
        Assert.Equal(a.Entries.Keys.Order(), b.Entries.Keys.Order());
        foreach (var key in a.Entries.Keys)
            Assert.True(a.Read(key).eq(b.Read(key)).all().item<bool>(), $"{key} differs");
    }

    static void Train(TempDir dir, string name, string config)
    {
        File.WriteAllText(dir[name], config);
        Assert.Equal(0, Cli.Cli.Run(["train", dir[name]]));
    }

    [Fact]
    public void Resuming_from_a_checkpoint_reproduces_the_uninterrupted_run_exactly()
    {
        using var dir = TestSetup.TempDir();
        Train(dir, "a.yml", Config(dir, dir["a"], ""));
        var full = Losses(dir["a"]);
        Assert.Equal(6, full.Length);
        foreach (var step in new[] { 2, 4, 6 })
            foreach (var file in new[] { "adapter_model.safetensors", "adapter_config.json", "optimizer.bin", "rng_state.bin", "trainer_state.json", "axolotl_config.yml" })
                Assert.True(File.Exists(Path.Combine(dir["a"], $"checkpoint-{step}", file)), $"checkpoint-{step}/{file}");

        Train(dir, "b.yml", Config(dir, dir["b"], $"resume_from_checkpoint: {Path.Combine(dir["a"], "checkpoint-4")}"));
        Assert.Equal(full, Losses(dir["b"]));
        // It continued rather than restarted: steps 1-4 were not run again, so no checkpoint-2 was written.
        Assert.False(Directory.Exists(Path.Combine(dir["b"], "checkpoint-2")));
        Assert.True(Directory.Exists(Path.Combine(dir["b"], "checkpoint-6")));
        AssertSameTensors(Path.Combine(dir["a"], "adapter_model.safetensors"), Path.Combine(dir["b"], "adapter_model.safetensors"));
    }

    /// <summary>In bf16 the weights are bf16 and their fp32 masters live in optimizer.bin: the resume restores both.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Auto_resume_picks_the_newest_checkpoint_and_full_finetunes_resume_too(bool bf16)
    {
        using var dir = TestSetup.TempDir();
        Train(dir, "a.yml", Config(dir, dir["a"], "", lora: false, bf16: bf16));
        Directory.CreateDirectory(dir["c"]);
        foreach (var step in new[] { 2, 4 })
        {
            var target = Path.Combine(dir["c"], $"checkpoint-{step}");
            Directory.CreateDirectory(target);
            foreach (var f in Directory.GetFiles(Path.Combine(dir["a"], $"checkpoint-{step}"))) File.Copy(f, Path.Combine(target, Path.GetFileName(f)));
        }
        // Marks checkpoint-2 as not to be rewritten: a run that restarted instead of resuming would write it again.
        File.Delete(Path.Combine(dir["c"], "checkpoint-2", "model.safetensors"));
        // A half-written checkpoint (no trainer_state.json) must be ignored.
        Directory.CreateDirectory(Path.Combine(dir["c"], "checkpoint-5"));
        Train(dir, "c.yml", Config(dir, dir["c"], "auto_resume_from_checkpoints: true", lora: false, bf16: bf16));
        Assert.Equal(Losses(dir["a"]), Losses(dir["c"]));
        Assert.False(File.Exists(Path.Combine(dir["c"], "checkpoint-2", "model.safetensors")));
        AssertSameTensors(Path.Combine(dir["a"], "model.safetensors"), Path.Combine(dir["c"], "model.safetensors"));
        Assert.Equal(bf16 ? "BF16" : "F32", SafetensorsFile.Open(Path.Combine(dir["c"], "model.safetensors")).Entries["model.norm.weight"].DType);
    }

    [Fact]
    public void Save_total_limit_keeps_the_newest_checkpoints()
    {
        using var dir = TestSetup.TempDir();
        Train(dir, "a.yml", Config(dir, dir["a"], "save_total_limit: 2"));
        Assert.Equal(["checkpoint-4", "checkpoint-6"], Directory.GetDirectories(dir["a"], "checkpoint-*").Select(Path.GetFileName).Order());
        Assert.Empty(Directory.GetDirectories(dir["a"], ".checkpoint-*"));

        // Running the finished job again with auto-resume trains nothing more and keeps its results.
        var before = File.ReadAllBytes(Path.Combine(dir["a"], "adapter_model.safetensors"));
        Train(dir, "again.yml", Config(dir, dir["a"], "save_total_limit: 2\nauto_resume_from_checkpoints: true"));
        Assert.Equal(6, Losses(dir["a"]).Length);
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(dir["a"], "adapter_model.safetensors")));
    }
}
