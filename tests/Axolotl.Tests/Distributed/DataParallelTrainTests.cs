using System.Diagnostics;
using System.Text.Json.Nodes;
using Axolotl.IO;
using static TorchSharp.torch;

namespace Axolotl.Tests.Distributed;

/// <summary>
/// `axolotl train` as 2 MPI ranks against one process with twice the micro-batch, on the same config: the same loss at
/// every step and the same trained weights (fp32, up to summation order), for LoRA, packing, and a full fine-tune with
/// ZeRO stages 1 and 2; and a rank killed mid-run ending the job, then resuming exactly.
/// </summary>
[Trait("Category", "Slow")]
public class DataParallelTrainTests
{
    const double Tolerance = 1e-5;

    /// <summary>24 pre-tokenized rows of 12 to 57 tokens over the tiny model's 512 ids (seeded, so every run is the same).</summary>
    static string WriteRows(TempDir dir)
    {
        var random = new Random(19);
        File.WriteAllLines(dir["rows.jsonl"], Enumerable.Range(0, 24).Select(i => new JsonObject
        {
            ["input_ids"] = new JsonArray(Enumerable.Range(0, 12 + random.Next(46)).Select(_ => (JsonNode)random.Next(3, 512)).ToArray()),
        }.ToJsonString()));
        return dir["rows.jsonl"];
    }

    static string Config(TempDir dir, string name, int microBatch, string method, string extra = "")
    {
        var path = dir[name + ".yml"];
        File.WriteAllText(path, $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            datasets:
              - path: {WriteRows(dir)}
            sequence_len: 64
            {method}
            micro_batch_size: {microBatch}
            gradient_accumulation_steps: 2
            num_epochs: 2
            learning_rate: 0.002
            lr_scheduler: cosine
            warmup_steps: 1
            logging_steps: 1
            bf16: false
            dataset_prepared_path: {dir["prepared-" + name]}
            output_dir: {dir[name]}
            {(extra.Contains("save_strategy") ? "" : "save_strategy: \"no\"")}
            {extra}
            """);
        return path;
    }

    const string Lora = "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0.0\nlora_target_linear: true";

    static string ZeroConfig(TempDir dir, int stage)
    {
        File.WriteAllText(dir[$"zero{stage}.json"], "{\"zero_optimization\": {\"stage\": " + stage + "}, \"bf16\": {\"enabled\": \"auto\"}}");
        return dir[$"zero{stage}.json"];
    }

    /// <summary>One process, or N ranks under mpirun; with <paramref name="launcher"/> through `train --nproc N` instead.</summary>
    static (int Code, string Stdout, string Stderr) Train(int ranks, string config, IReadOnlyDictionary<string, string>? environment = null, bool launcher = false)
    {
        if (ranks > 1 && !launcher) return MpiJob.Run(ranks, ["train", config], environment);
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { MpiJob.Cli, "train", config }.Concat(launcher ? ["--nproc", ranks.ToString()] : [])) start.ArgumentList.Add(a);
        start.Environment["OMP_NUM_THREADS"] = "1";
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    static void TrainOk(int ranks, string config, bool launcher = false)
    {
        var (code, stdout, stderr) = Train(ranks, config, launcher: launcher);
        Assert.True(code == 0, $"{ranks} rank(s) exited {code}:\n{stderr}\n{stdout}");
    }

    static double[] Losses(string outputDir) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(outputDir, "trainer_state.json")))!["log_history"]!.AsArray()
            .Where(e => e!["loss"] != null).Select(e => (double)e!["loss"]!).ToArray();

    static void AssertClose(string fileA, string fileB, double tolerance)
    {
        using var scope = NewDisposeScope();
        var a = SafetensorsFile.Open(fileA);
        var b = SafetensorsFile.Open(fileB);
        Assert.Equal(a.Entries.Keys.Order(), b.Entries.Keys.Order());
        foreach (var key in a.Entries.Keys)
        {
            double difference = (a.Read(key).to(ScalarType.Float64) - b.Read(key).to(ScalarType.Float64)).abs().max().item<double>();
            Assert.True(difference <= tolerance, $"{key}: differs by {difference}");
        }
    }

    static void AssertParity(TempDir dir, string one, string two, string weights)
    {
        var (single, parallel) = (Losses(dir[one]), Losses(dir[two]));
        Assert.True(single.Length >= 4, $"only {single.Length} steps logged");
        Assert.Equal(single.Length, parallel.Length);
        for (int i = 0; i < single.Length; i++)
            Assert.True(Math.Abs(single[i] - parallel[i]) <= Tolerance, $"step {i + 1}: loss {single[i]} alone, {parallel[i]} on 2 ranks");
        AssertClose(Path.Combine(dir[one], weights), Path.Combine(dir[two], weights), Tolerance);
    }

    [MpiFact]
    public void Lora_on_two_ranks_of_micro_batch_2_equals_one_process_of_micro_batch_4()
    {
        using var dir = TestSetup.TempDir();
        TrainOk(1, Config(dir, "one", 4, Lora));
        // Through the launcher: `axolotl train config.yml --nproc 2` starts mpirun itself.
        TrainOk(2, Config(dir, "two", 2, Lora), launcher: true);
        AssertParity(dir, "one", "two", "adapter_model.safetensors");
        // Outputs come from rank 0 alone: one metrics line per logged step, not one per rank.
        Assert.Equal(Losses(dir["two"]).Length, File.ReadAllLines(Path.Combine(dir["two"], "metrics.jsonl")).Count(l => l.Contains("\"loss\"")));
    }

    [MpiFact]
    public void Packed_lora_with_zero_stage_1_on_two_ranks_equals_one_process()
    {
        using var dir = TestSetup.TempDir();
        const string packing = "sample_packing: true\npad_to_sequence_len: true";
        TrainOk(1, Config(dir, "one", 4, Lora, packing));
        TrainOk(2, Config(dir, "two", 2, Lora, packing + $"\ndeepspeed: {ZeroConfig(dir, 1)}"));
        AssertParity(dir, "one", "two", "adapter_model.safetensors");
    }

    [MpiFact]
    public void Full_fine_tune_with_zero_stage_2_on_two_ranks_equals_one_process()
    {
        using var dir = TestSetup.TempDir();
        TrainOk(1, Config(dir, "one", 4, ""));
        var (code, stdout, stderr) = Train(2, Config(dir, "two", 2, "", $"deepspeed: {ZeroConfig(dir, 2)}"));
        Assert.True(code == 0, stderr + stdout);
        Assert.Contains("ZeRO stage 2: optimizer state and gradients sharded across processes", stdout);
        AssertParity(dir, "one", "two", "model.safetensors");
    }

    [MpiFact]
    public void A_rank_killed_mid_run_ends_the_job_and_auto_resume_continues_exactly()
    {
        using var dir = TestSetup.TempDir();
        string extra = $"deepspeed: {ZeroConfig(dir, 2)}\nsave_strategy: steps\nsave_steps: 2\nauto_resume_from_checkpoints: true";
        // The same config twice: one run never stopped, one whose rank 1 SIGKILLs itself after step 5.
        TrainOk(2, Config(dir, "whole", 2, Lora.Replace("lora_dropout: 0.0", "lora_dropout: 0.1"), extra));
        var config = Config(dir, "killed", 2, Lora.Replace("lora_dropout: 0.0", "lora_dropout: 0.1"), extra);
        var (code, _, stderr) = Train(2, config, new Dictionary<string, string> { ["AXOLOTL_TEST_KILL_RANK"] = "1", ["AXOLOTL_TEST_KILL_STEP"] = "5" });
        Assert.NotEqual(0, code);
        Assert.Contains("signal 9", stderr);
        Assert.False(File.Exists(Path.Combine(dir["killed"], "adapter_model.safetensors")), "the killed job must not have finished");
        Assert.True(Directory.Exists(Path.Combine(dir["killed"], "checkpoint-4")), "checkpoint-4 was saved before the kill");
        TrainOk(2, config);
        Assert.Equal(Losses(dir["whole"]), Losses(dir["killed"]));
        AssertClose(Path.Combine(dir["whole"], "adapter_model.safetensors"), Path.Combine(dir["killed"], "adapter_model.safetensors"), 0);
    }
}
