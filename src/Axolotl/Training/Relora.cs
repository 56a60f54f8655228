using System.Text.Json.Nodes;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Quantization;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Training;

/// <summary>
/// ReLoRA (Axolotl's ReLoRACallback): every jagged_restart_steps steps the LoRA is merged into the base weights (a
/// quantized base is dequantized, added to and re-quantized), the adapter restarts as PEFT initialises it (A
/// kaiming-uniform, B zero, so the model's function is unchanged), and the adapter's optimizer state is pruned. The
/// jagged restart schedule (<see cref="LrSchedule.JaggedRestarts"/>) warms the rate back up after each restart.
/// </summary>
internal static class Relora
{
    /// <summary>The merged base weights a checkpoint carries once a restart has happened (restored on resume).</summary>
    public const string FolderName = "relora";
    const string WeightsFile = "model.safetensors";

    /// <summary>Axolotl's JaggedLRRestartScheduler settings, when jagged_restart_steps is set (with or without ReLoRA).</summary>
    public static LrSchedule.JaggedRestarts? JaggedRestartsOf(AxolotlConfig c) => c.JaggedRestartSteps is int steps and > 0
        ? new LrSchedule.JaggedRestarts(steps, c.JaggedRestartWarmupSteps is int w and > 0 ? w : 10, c.JaggedRestartAnnealSteps is int a and > 0 ? a : 1,
                                        c.CosineMinLrRatio is double m and not 0 ? m : 0.001)
        : null;

    /// <summary>The callback for a config with relora: true (null otherwise).</summary>
    public static ReloraCallback? CallbackFor(AxolotlConfig c, string? resumeFrom, Action<string> info) => c.Relora
        ? new ReloraCallback(c.JaggedRestartSteps!.Value, c.ReloraPruneMethod ?? "magnitude",
                             c.ReloraPruneRatio ?? (c.ReloraPruneMethod == "reset" ? 0.999 : 0.9), resumeFrom, info)
        : null;

    /// <summary>
    /// PEFT's merge into the base (W += scale·B·A in fp32, rounded once to W's dtype; a quantized W is dequantized,
    /// summed and quantized again) and reset_lora_parameters (A kaiming-uniform with a = √5 from torch's generator, B zero).
    /// </summary>
    public static int MergeAndReset(nn.Module model)
    {
        using var _ = no_grad();
        int merged = 0;
        foreach (var (name, layer) in Lora.Layers(model))
        {
            if (layer.UseDora) throw new UserError("relora merges plain LoRA layers; it does not work with peft_use_dora.");
            using (var scope = NewDisposeScope())
            {
                var weight = layer.BaseWeight(ScalarType.Float32).add_(layer.Delta().to(ScalarType.Float32));
                SetBase(layer, weight);
            }
            nn.init.kaiming_uniform_(layer.lora_A.weight, Math.Sqrt(5));
            layer.lora_B.weight.zero_();
            merged++;
        }
        return merged;
    }

    static void SetBase(LoraLinear layer, Tensor weight)
    {
        switch (layer.base_layer)
        {
            case Linear l: l.weight.copy_(weight); break;
            case QuantizedLinear q: q.Requantize(weight); break;
            default: throw new InvalidOperationException($"LoRA over a {layer.base_layer.GetType().Name}");
        }
    }

    /// <summary>
    /// Axolotl's magnitude_pruning_: zeroes the values whose magnitude is at or below the <paramref name="ratio"/>
    /// quantile of the magnitudes (torch.quantile's linear interpolation). Like Axolotl, a tensor over torch.quantile's
    /// limit of 2^24 elements is left alone.
    /// </summary>
    public static void MagnitudePrune(Tensor t, double ratio)
    {
        using var scope = NewDisposeScope();
        var magnitude = t.abs();
        long n = magnitude.numel();
        if (n == 0 || n > 1 << 24) return;
        var sorted = magnitude.flatten().to(ScalarType.Float32).sort().Values;
        double position = ratio * (n - 1);
        long below = (long)Math.Floor(position), above = (long)Math.Ceiling(position);
        double lo = sorted[below].item<float>(), hi = sorted[above].item<float>();
        var threshold = (float)(lo + (hi - lo) * (position - below));
        t.mul_(magnitude.gt(threshold).to(t.dtype));
    }

    /// <summary>Axolotl's random_pruning_ (and reset): each value kept where torch.rand's draw exceeds the ratio.</summary>
    public static void RandomPrune(Tensor t, double ratio)
    {
        using var scope = NewDisposeScope();
        t.mul_(rand(t.shape, dtype: ScalarType.Float32, device: t.device).gt(ratio).to(t.dtype));
    }

    internal static IReadOnlyList<(string Name, LoraLinear Layer)> Layers(nn.Module model) => Lora.Layers(model).ToList();

    /// <summary>The LoRA-wrapped base weights (module path + ".weight", fp32) into <paramref name="dir"/>/relora.</summary>
    public static void SaveBases(nn.Module model, string dir)
    {
        using var scope = NewDisposeScope();
        var folder = Path.Combine(dir, FolderName);
        Directory.CreateDirectory(folder);
        var tensors = Layers(model).Select(l => KeyValuePair.Create(l.Name + ".weight", l.Layer.BaseWeight(ScalarType.Float32))).ToList();
        SafetensorsFile.Write(Path.Combine(folder, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Restores the merged base weights a checkpoint saved; false when it has none (no restart before it).</summary>
    internal static bool LoadBases(nn.Module model, string checkpoint)
    {
        var path = Path.Combine(checkpoint, FolderName, WeightsFile);
        if (!File.Exists(path)) return false;
        var file = SafetensorsFile.Open(path);
        using var _ = no_grad();
        foreach (var (name, layer) in Layers(model))
        {
            if (!file.Entries.ContainsKey(name + ".weight")) throw new UserError($"{path}: no merged weight for '{name}'; the checkpoint is not from this run's adapter layout.");
            using var weight = file.Read(name + ".weight");
            SetBase(layer, weight);
        }
        return true;
    }
}

/// <summary>
/// Axolotl's ReLoRACallback on the trainer seam. Axolotl restarts at the beginning of step N + 1 for each multiple N of
/// jagged_restart_steps (so never after the last step); here the same restart runs at the end of step N, before that
/// step's save, so a checkpoint holds the restarted adapter, its pruned optimizer state and (written with the weights,
/// <see cref="Relora.SaveBases"/>) the merged base weights.
/// </summary>
internal sealed class ReloraCallback(int restartSteps, string pruneMethod, double pruneRatio, string? resumeFrom, Action<string> info) : ITrainerCallback
{
    public int RestartSteps => restartSteps;

    public void OnTrainBegin(TrainerContext c)
    {
        if (resumeFrom == null) return;
        if (Relora.LoadBases(c.Model, resumeFrom)) info($"ReLoRA: restored the merged base weights from {Path.Combine(resumeFrom, Relora.FolderName)}.");
        else if (c.Step >= restartSteps) info("ReLoRA: resuming after a restart, but the checkpoint holds no merged base weights.");
    }

    public void OnStepEnd(TrainerContext c)
    {
        if (c.Step % restartSteps != 0 || c.Step >= c.Plan.TotalSteps) return;
        int layers = Relora.MergeAndReset(c.Model);
        // The trainer's slots follow the trainable parameters in order; Axolotl prunes those named lora_*.
        var trainable = c.Model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Action<Tensor> prune = pruneMethod == "magnitude" ? t => Relora.MagnitudePrune(t, pruneRatio) : t => Relora.RandomPrune(t, pruneRatio);
        for (int i = 0; i < trainable.Count; i++)
            if (trainable[i].Contains("lora_")) c.Optimizer.TransformMoments(i, prune);
        info($"ReLoRA: restart {c.Step / restartSteps} after step {c.Step}: merged {layers} LoRA layers into the base, restarted them and pruned their optimizer state ({pruneMethod}, ratio {pruneRatio}).");
    }

    /// <summary>Axolotl's on_log: num_lora_restarts as it stands when step N logs (its restart comes at step N + 1).</summary>
    public void OnLog(TrainerContext c, JsonObject entry)
    {
        if (entry["loss"] != null) entry["num_lora_restarts"] = Math.Max(0, c.Step - 1) / restartSteps;
    }
}
