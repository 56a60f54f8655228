using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Training.Objectives;

/// <summary>What <c>axolotl train</c> needs for an <c>rl:</c> config: the batches and the objective with its reference.</summary>
internal static class PreferenceTraining
{
    /// <summary>The prepared pairs as training batches (micro_batch_size pairs) and evaluation batches (eval_batch_size
    /// pairs); for KTO, the examples with their KL completions.</summary>
    public static (IBatchSource Train, IBatchSource? Eval) Batches(AxolotlConfig config, PreparedDataset data, int padTokenId) =>
        (config.Rl == RlMethod.Kto
            ? new KtoBatches(data.Examples, config.MicroBatchSize, config.MicroBatchSize, padTokenId, config.SequenceLen)
            : new PreferenceBatches(data.Examples, config.MicroBatchSize, padTokenId, config.SequenceLen, config.Seed, config.CurriculumSampling),
         data.Eval.Count == 0 || config.EvalStrategy == IntervalStrategy.No ? null : EvaluationBatches(config, data.Eval, padTokenId));

    /// <summary>Prepared pairs (or KTO examples) in order, eval_batch_size at a time: the evaluation of a split.</summary>
    public static IBatchSource EvaluationBatches(AxolotlConfig config, IReadOnlyList<Example> rows, int padTokenId) =>
        config.Rl == RlMethod.Kto
            ? new KtoBatches(rows, config.EvalBatchSize ?? config.MicroBatchSize, config.MicroBatchSize, padTokenId, config.SequenceLen)
            : new PreferenceBatches(rows, config.EvalBatchSize ?? config.MicroBatchSize, padTokenId, config.SequenceLen, config.Seed, sequential: true);

    /// <summary>
    /// The objective of the config's method. DPO and IPO compare against a reference: with an adapter, the model with
    /// its adapters disabled; for a full fine-tune, a frozen copy of the weights as they are now (before any step);
    /// with precompute_ref_log_probs, that reference run once over every pair before training.
    /// </summary>
    public static ITrainingObjective Objective(AxolotlConfig config, CausalLM model, bool adapter, IEnumerable<IBatchSource> precomputeOver, Action<string> info)
    {
        var settings = PreferenceSettings.FromConfig(config);
        if (!settings.NeedsReference) return new PreferenceObjective(model, settings, null);
        if (adapter && config.LoraModulesToSave is { Count: > 0 })
            throw new UserError($"lora_modules_to_save cannot be combined with rl: {ConfigLoader.Spelling(settings.Method)} yet: the adapter-disabled reference would keep the trained copies; leave lora_modules_to_save out.");
        var reference = adapter ? PreferenceObjective.AdapterDisabledReference(model) : PreferenceObjective.FrozenReference(FrozenCopy(model));
        if (config.PrecomputeRefLogProbs)
        {
            var batches = precomputeOver.SelectMany(s => s.Epoch(0)).ToList();
            info($"Reference log-probabilities: computing them for {batches.Sum(b => b.Rows)} sequences before training (precompute_ref_log_probs).");
            reference = PreferenceObjective.PrecomputedReference(reference, batches);
        }
        info($"Preference training: {PreferenceSettings.Describe(config)}; reference: " +
             (adapter ? "the base model (adapters disabled)" : "a frozen copy of the starting weights") +
             (config.PrecomputeRefLogProbs ? ", precomputed." : "."));
        return settings.Method == RlMethod.Kto
            ? new KtoObjective(model, settings.Beta, settings.DesirableWeight, settings.UndesirableWeight, reference)
            : new PreferenceObjective(model, settings, reference);
    }

    /// <summary>A copy of the model's weights (same dtype and device) with no gradients: a full fine-tune's reference.</summary>
    static CausalLM FrozenCopy(CausalLM model)
    {
        var copy = CausalLM.Create(model.Config, model.model.embed_tokens.weight.dtype, model.ComputeType);
        if (model.Device.type != DeviceType.CPU) copy.to(model.Device);
        using var _ = no_grad();
        var source = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in copy.named_parameters()) p.copy_(source[name]);
        return copy;
    }
}
