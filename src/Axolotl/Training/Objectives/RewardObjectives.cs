using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Training.Objectives;

/// <summary>
/// TRL's RewardTrainer.compute_loss on a sequence classifier: each row's reward is the score at its last non-padding
/// token (transformers' rule, <see cref="ClassifierHead.LastNonPadPositions"/>); the batch holds the pairs' chosen rows
/// then their rejected rows, and the loss of a pair is −log σ(r_chosen − r_rejected), plus
/// center_rewards_coefficient × (r_chosen + r_rejected)² when set (TRL adds coef × the mean of it). Units are pairs.
/// Metrics as TRL logs them per micro-batch and averages: min_reward, mean_reward and max_reward over all the batch's
/// rewards, accuracy (r_chosen &gt; r_rejected) and margin (r_chosen − r_rejected); summed here so that sum ÷ pairs is
/// the micro-batch's value (min and max weighted by its pairs).
/// </summary>
internal sealed class BradleyTerryObjective(CausalLM model, long padTokenId, double? centerRewardsCoefficient) : ITrainingObjective
{
    public long Units(Batch batch) => batch.Rows / 2;

    public ObjectiveOutput ForwardBackward(Batch batch, double scale)
    {
        var (loss, metrics) = Compute(batch);
        (loss * scale).backward();
        return new ObjectiveOutput(loss.item<float>(), metrics);
    }

    public ObjectiveOutput Forward(Batch batch)
    {
        var (loss, metrics) = Compute(batch);
        return new ObjectiveOutput(loss.item<float>(), metrics);
    }

    (Tensor LossSum, IReadOnlyDictionary<string, double> Metrics) Compute(Batch batch)
    {
        var rewards = Rewards(model, BatchTensors.Of(batch, model.Device).Ids, padTokenId);
        long pairs = batch.Rows / 2;
        var chosen = rewards.narrow(0, 0, pairs);
        var rejected = rewards.narrow(0, pairs, pairs);
        var (loss, metrics) = PairLoss(chosen, rejected, centerRewardsCoefficient);
        return (loss, metrics);
    }

    /// <summary>Each row's reward (fp32): the score head at the row's last non-padding token. ids [rows, seq] → [rows].</summary>
    public static Tensor Rewards(CausalLM model, Tensor ids, long padTokenId)
    {
        var score = model.score ?? throw new InvalidOperationException("a reward model needs a score head");
        var hidden = model.model.forward(ids);
        var last = ClassifierHead.LastNonPadPositions(ids, padTokenId);
        var picked = hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[^1])).squeeze(1);
        return score.forward(picked).to(ScalarType.Float32).squeeze(-1);
    }

    /// <summary>The pairs' summed loss and summed metrics (see the class summary), from rewards [pairs] each.</summary>
    public static (Tensor LossSum, IReadOnlyDictionary<string, double> Metrics) PairLoss(Tensor chosen, Tensor rejected, double? centerRewardsCoefficient)
    {
        long pairs = chosen.shape[0];
        var difference = chosen - rejected;
        var loss = -F.logsigmoid(difference).sum();
        if (centerRewardsCoefficient is double coefficient) loss = loss + (chosen + rejected).pow(2).sum() * coefficient;
        using var _ = no_grad();
        var all = cat([chosen.detach(), rejected.detach()]);
        var metrics = new Dictionary<string, double>
        {
            ["min_reward"] = all.min().item<float>() * (double)pairs,
            ["mean_reward"] = all.sum().item<float>() / 2.0,
            ["max_reward"] = all.max().item<float>() * (double)pairs,
            ["accuracy"] = difference.detach().gt(0).sum().item<long>(),
            ["margin"] = difference.detach().sum().item<float>(),
        };
        return (loss, metrics);
    }
}

/// <summary>
/// TRL's PRMTrainer on a token classifier: transformers' token-classification loss, the cross-entropy of the score
/// head's logits against the labels at the labelled positions (the step separators), summed here and divided by the
/// labelled tokens of the accumulation window (transformers' num_items_in_batch). Evaluation also reports accuracy,
/// argmax = label at the labelled positions (TRL's compute_accuracy); training logs only the loss, as TRL does.
/// </summary>
internal sealed class ProcessRewardObjective(CausalLM model) : ITrainingObjective
{
    public long Units(Batch batch) => batch.Labels.LongCount(l => l != Example.IgnoreIndex);

    public ObjectiveOutput ForwardBackward(Batch batch, double scale)
    {
        var (logits, targets) = Labelled(batch);
        if (targets.shape[0] == 0) return new ObjectiveOutput(0);
        var loss = F.cross_entropy(logits, targets, reduction: nn.Reduction.Sum);
        (loss * scale).backward();
        return new ObjectiveOutput(loss.item<float>());
    }

    public ObjectiveOutput Forward(Batch batch)
    {
        var (logits, targets) = Labelled(batch);
        if (targets.shape[0] == 0) return new ObjectiveOutput(0);
        var loss = F.cross_entropy(logits, targets, reduction: nn.Reduction.Sum);
        return new ObjectiveOutput(loss.item<float>(), new Dictionary<string, double> { ["accuracy"] = logits.argmax(-1).eq(targets).sum().item<long>() });
    }

    /// <summary>The score head's fp32 logits at the labelled positions [n, num_labels], and those labels [n].</summary>
    (Tensor Logits, Tensor Targets) Labelled(Batch batch)
    {
        var score = model.score ?? throw new InvalidOperationException("a process reward model needs a score head");
        var (ids, labels, _, _) = BatchTensors.Of(batch, model.Device);
        var hidden = model.model.forward(ids);
        var flat = labels.reshape(-1);
        var keep = flat.ne(Example.IgnoreIndex).nonzero().squeeze(1);
        var picked = hidden.reshape(-1, hidden.shape[^1]).index_select(0, keep);
        return (score.forward(picked).to(ScalarType.Float32), flat.index_select(0, keep));
    }
}

/// <summary>
/// The batches of a reward-model run: the prepared pairs (consecutive chosen/rejected examples) in a seeded order per
/// epoch (in order for evaluation or with curriculum_sampling), micro_batch_size pairs per batch collated as TRL's
/// DataCollatorForPreference: the chosen rows, then the rejected rows, right-padded with the pad token to the longest
/// (rounded up to pad_to_multiple_of).
/// </summary>
internal sealed class RewardPairBatches : IBatchSource
{
    readonly IReadOnlyList<Example> _examples;
    readonly int _pairsPerBatch, _padTokenId, _seed;
    readonly int? _padToMultipleOf;
    readonly bool _sequential;

    public RewardPairBatches(IReadOnlyList<Example> examples, int pairsPerBatch, int padTokenId, int? padToMultipleOf, int seed, bool sequential)
    {
        if (examples.Count % 2 != 0) throw new ArgumentException("reward-model examples come in chosen/rejected pairs", nameof(examples));
        (_examples, _pairsPerBatch, _padTokenId, _padToMultipleOf, _seed, _sequential) = (examples, pairsPerBatch, padTokenId, padToMultipleOf, seed, sequential);
    }

    public int Pairs => _examples.Count / 2;
    public int BatchesPerEpoch => (Pairs + _pairsPerBatch - 1) / _pairsPerBatch;
    public int Examples => Pairs;
    public double MeanRowTokens => _examples.Count == 0 ? 0 : _examples.Average(e => (double)e.InputIds.Length);

    public IReadOnlyList<Batch> Epoch(int epoch, int firstBatch = 0)
    {
        var order = Enumerable.Range(0, Pairs).ToList();
        if (!_sequential) DatasetBuilder.Shuffle(order, unchecked(_seed + epoch));
        var groups = order.Chunk(_pairsPerBatch).ToArray();
        return new CollatedOnDemand(groups.Length, i => Collate(groups[i].Select(p => (_examples[2 * p], _examples[2 * p + 1])).ToList(), _padTokenId, _padToMultipleOf));
    }

    /// <summary>TRL's DataCollatorForPreference: [chosen rows; rejected rows], right-padded together.</summary>
    public static Batch Collate(IReadOnlyList<(Example Chosen, Example Rejected)> pairs, int padTokenId, int? padToMultipleOf) =>
        Batch.Pad([.. pairs.Select(p => p.Chosen), .. pairs.Select(p => p.Rejected)], padTokenId, padToMultipleOf);
}

/// <summary>What <c>axolotl train</c> needs for reward_model / process_reward_model: the architecture, batches and objective.</summary>
internal static class RewardTraining
{
    public static bool Applies(AxolotlConfig config) => config.RewardModel || config.ProcessRewardModel;

    /// <summary>
    /// The architecture with the config's classifier head: a sequence classifier with num_labels 1 and the tokenizer's
    /// pad token in config.json (TRL sets it: the head needs it to find each row's end), or a token classifier.
    /// </summary>
    /// <remarks>TRL's trainers turn every dropout off (disable_dropout, on by default): the model is built without it,
    /// while config.json keeps the values it came with.</remarks>
    public static DecoderConfig Architecture(DecoderConfig architecture, AxolotlConfig config, int? padTokenId = null) =>
        !Applies(config) ? architecture
        : ClassifierHead.Attach(architecture, config.RewardModel ? ClassifierKind.Sequence : ClassifierKind.Token, config.RewardModel ? 1 : config.NumLabels ?? 2, padTokenId)
            with { AttentionDropout = 0, ResidualDropout = 0, EmbeddingDropout = 0 };

    /// <summary>The pad token a reward model's config.json names: the tokenizer's, else its EOS (TRL's rule); null otherwise.</summary>
    public static int? PadTokenId(AxolotlConfig config, Tokenization.Tokenizer? tokenizer) =>
        config.RewardModel ? tokenizer?.PadTokenId ?? tokenizer?.EosTokenId : null;

    /// <summary>PEFT's task type for the config's model: SEQ_CLS / TOKEN_CLS add the score head to modules_to_save.</summary>
    public static string PeftTaskType(AxolotlConfig config) => config.RewardModel ? "SEQ_CLS" : config.ProcessRewardModel ? "TOKEN_CLS" : "CAUSAL_LM";

    /// <summary>PEFT's modules_to_save for a classifier: the config's, then classifier and score.</summary>
    public static IReadOnlyList<string> ModulesToSave(AxolotlConfig config) =>
        Applies(config) ? [.. (config.LoraModulesToSave ?? []).Where(m => m is not ("classifier" or ClassifierHead.Module)), "classifier", ClassifierHead.Module]
            : config.LoraModulesToSave ?? [];

    /// <summary>Training and evaluation batches: pairs for a reward model, padded token-labelled rows for a PRM.</summary>
    public static (IBatchSource Train, IBatchSource? Eval) Batches(AxolotlConfig config, PreparedDataset data, TrainingOptions options)
    {
        bool evaluate = data.Eval.Count > 0 && config.EvalStrategy != IntervalStrategy.No;
        if (config.RewardModel)
            return (new RewardPairBatches(data.Examples, config.MicroBatchSize, options.PadTokenId, options.PadToMultipleOf, config.Seed, config.CurriculumSampling),
                evaluate ? new RewardPairBatches(data.Eval, config.EvalBatchSize ?? config.MicroBatchSize, options.PadTokenId, options.PadToMultipleOf, config.Seed, sequential: true) : null);
        return (new ExampleBatches(data.Examples, options), evaluate ? new EvaluationBatches(data.Eval, options) : null);
    }

    public static ITrainingObjective Objective(AxolotlConfig config, CausalLM model, int padTokenId) =>
        config.RewardModel ? new BradleyTerryObjective(model, padTokenId, config.CenterRewardsCoefficient) : new ProcessRewardObjective(model);

    /// <summary>Commands that generate text cannot run a classifier: one sentence naming the key, instead of nonsense output.</summary>
    public static void RefuseGeneration(AxolotlConfig config, string command)
    {
        if (Applies(config))
            throw new UserError($"{command} runs a language model, but this config trains a classifier ({(config.RewardModel ? "reward_model" : "process_reward_model")}: true); score it with axolotl evaluate instead.");
    }

    public static string Describe(AxolotlConfig config) => config.RewardModel
        ? "Reward model: Bradley-Terry loss -log σ(r_chosen − r_rejected)" + (config.CenterRewardsCoefficient is double c ? $" + {c} × (r_chosen + r_rejected)²" : "") +
          ", each reward read at the row's last non-padding token by the score head."
        : $"Process reward model: cross-entropy of the score head ({config.NumLabels ?? 2} labels) at each step's last token.";
}
