using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>
/// The data of <c>reward_model: true</c>: Axolotl's bradley_terry.chat_template rows ({system?, input, chosen,
/// rejected}) rendered as two conversations — [system, user: input, assistant: chosen] and the same with rejected —
/// tokenized by the chat_template strategy and cut to sequence_len (Axolotl's BTChatTemplateStrategy). A pair is stored
/// as two consecutive examples, chosen then rejected, with every label -100: the score is read at the last token, so no
/// token is trained on as in SFT. The pairs are shuffled as datasets shuffles them (shuffle_merged_datasets) and the
/// last val_set_size of them are held out, as the SFT path splits its rows.
/// </summary>
internal static class BradleyTerryDataset
{
    public static PreparedDataset Build(AxolotlConfig config, Func<Tokenizer> tokenizer, Action<int>? progress = null, Action<string>? warn = null)
    {
        var bad = new BadRows(config.BadRows == "skip");
        var (pairs, rowsRead, _) = Read(config.Datasets, "train", config, tokenizer, bad, progress, warn);
        if (config.ShuffleMergedDatasets) pairs = DatasetBuilder.ShuffleAsDatasets(pairs, config.Seed);
        var eval = DatasetBuilder.HoldOutPairs(pairs, config, () => Read(config.TestDatasets, "test", config, tokenizer, bad, null, warn).Pairs);
        if (pairs.Count == 0)
            throw new UserError("no reward-model pairs are left" + (bad.Total > 0 ? $": {bad.Total} rows were skipped as bad ({bad.Summary()})" : "") + "; check the data.");
        int truncated = pairs.Concat(eval).Sum(p => p.Truncated);
        return new PreparedDataset(Flatten(pairs), rowsRead, 0, 0) { Eval = Flatten(eval), SkippedRows = bad.Counts, Truncated = truncated };
    }

    /// <summary>One row's two token sequences, and how many of them were cut to sequence_len.</summary>
    public sealed record Pair(int[] Chosen, int[] Rejected, int Truncated);

    static List<Example> Flatten(IEnumerable<Pair> pairs) =>
        pairs.SelectMany(p => new[] { Unlabelled(p.Chosen), Unlabelled(p.Rejected) }).ToList();

    static Example Unlabelled(int[] ids) => new(ids, Enumerable.Repeat(Example.IgnoreIndex, ids.Length).ToArray());

    static (List<Pair> Pairs, int RowsRead, int Dropped) Read(IReadOnlyList<DatasetConfig> datasets, string split, AxolotlConfig config,
        Func<Tokenizer> tokenizer, BadRows bad, Action<int>? progress, Action<string>? warn) =>
        PreferenceDataset.ReadRows<Pair>(datasets, split, config, tokenizer, bad, progress, warn, dataset =>
        {
            var strategy = Strategy(config, dataset, tokenizer, warn);
            return (row, _, warnOnce) => Tokenize(strategy, row, config.SequenceLen, warnOnce);
        });

    /// <summary>The chat_template strategy BTChatTemplateStrategy builds on: the dataset's template, roles and mappings,
    /// reading the conversation it puts together under "messages".</summary>
    internal static ChatTemplateStrategy Strategy(AxolotlConfig config, DatasetConfig d, Func<Tokenizer> tokenizer, Action<string>? warn)
    {
        var conversation = new DatasetConfig
        {
            Path = d.Path, Type = "chat_template", ChatTemplate = d.ChatTemplate, ChatTemplateJinja = d.ChatTemplateJinja,
            MessagePropertyMappings = d.MessagePropertyMappings, MessageFieldTraining = d.MessageFieldTraining,
            MessageFieldTrainingDetail = d.MessageFieldTrainingDetail, Roles = d.Roles, RolesToTrain = d.RolesToTrain,
            TrainOnEos = d.TrainOnEos, DropSystemMessage = d.DropSystemMessage,
        };
        var context = new StrategyContext(tokenizer, config.SequenceLen, config.TrainOnInputs) { EotTokens = config.EotTokens, Warn = warn };
        return new ChatTemplateStrategy(context, conversation, DatasetBuilder.ResolveChatTemplate(config, d, tokenizer(), warn));
    }

    /// <summary>A row's chosen and rejected conversations as token ids, each cut to <paramref name="maxLength"/> (with a warning).</summary>
    internal static Pair Tokenize(ChatTemplateStrategy strategy, Row row, int maxLength, Action<string> warn)
    {
        var system = row.Fields["system"] is JsonValue s && s.TryGetValue<string>(out var text) ? text : null;
        var input = PromptStrategies.Str(row, "input");
        int truncated = 0;
        int[] Side(string field)
        {
            var messages = new JsonArray();
            if (!string.IsNullOrEmpty(system)) messages.Add(new JsonObject { ["role"] = "system", ["content"] = system });
            messages.Add(new JsonObject { ["role"] = "user", ["content"] = input });
            messages.Add(new JsonObject { ["role"] = "assistant", ["content"] = PromptStrategies.Str(row, field) });
            var ids = strategy.Tokenize(row with { Fields = new JsonObject { ["messages"] = messages } }).Single().InputIds;
            if (ids.Length <= maxLength) return ids;
            warn($"To-be-trimmed {field} sequences exceed the max sequence length {maxLength}; they are cut to it, as Axolotl does.");
            truncated++;
            return ids[..maxLength];
        }
        var chosen = Side("chosen");
        var rejected = Side("rejected");
        return new Pair(chosen, rejected, truncated);
    }
}

/// <summary>
/// Axolotl's <c>type: stepwise_supervised</c> (after TRL's PRMTrainer.tokenize_row) for process reward models: the
/// prompt's tokens (BOS first when the tokenizer has one), then each completion step followed by step_separator's
/// tokens, labelled only at the separator's last token with the step's label (0/1; with train_on_last_step_only only the
/// last step is labelled); the completion is cut to max_completion_length, the whole to sequence_len. Labels are the
/// classes at their own positions (token classification), not next-token targets.
/// </summary>
internal sealed class StepwiseSupervised(Tokenizer tokenizer, int sequenceLen, string stepSeparator, int? maxCompletionLength, bool trainOnLastStepOnly) : IPromptStrategy
{
    public static StepwiseSupervised For(DatasetConfig d, StrategyContext c) =>
        new(c.Tokenizer(), c.SequenceLen, d.StepSeparator ?? "\n", d.MaxCompletionLength, d.TrainOnLastStepOnly);

    public IEnumerable<Example> Tokenize(Row row)
    {
        var prompt = tokenizer.Encode(PromptStrategies.Str(row, "prompt"), addSpecialTokens: false);
        var completions = Strings(row, "completions");
        var stepLabels = Labels(row);
        if (stepLabels.Count != completions.Count)
            throw new BadRowError("wrong type", $"{row.Where}: {completions.Count} completions but {stepLabels.Count} labels; each step needs one label.");
        if (trainOnLastStepOnly)
            for (int i = 0; i < stepLabels.Count - 1; i++) stepLabels[i] = Example.IgnoreIndex;
        var separator = tokenizer.Encode(stepSeparator, addSpecialTokens: false);
        var completionIds = new List<int>();
        var labels = new List<int>();
        for (int i = 0; i < completions.Count; i++)
        {
            var step = tokenizer.Encode(completions[i], addSpecialTokens: false).Concat(separator).ToList();
            completionIds.AddRange(step);
            labels.AddRange(Enumerable.Repeat(Example.IgnoreIndex, step.Count - 1));
            // A step with no tokens at all (empty text, empty separator) has no position to carry its label, as in zip there.
            if (step.Count > 0) labels.Add(stepLabels[i]);
        }
        if (maxCompletionLength is int max)
        {
            if (completionIds.Count > max) completionIds.RemoveRange(max, completionIds.Count - max);
            if (labels.Count > max) labels.RemoveRange(max, labels.Count - max);
        }
        var promptIds = tokenizer.BosTokenId is int bos ? [bos, .. prompt] : prompt.ToList();
        var ids = promptIds.Concat(completionIds).ToArray();
        var all = Enumerable.Repeat(Example.IgnoreIndex, promptIds.Count).Concat(labels).ToArray();
        if (sequenceLen > 0 && ids.Length > sequenceLen) (ids, all) = (ids[..sequenceLen], all[..sequenceLen]);
        yield return new Example(ids, all);
    }

    static List<string> Strings(Row row, string field) =>
        row.Fields[field] is JsonArray list && list.All(x => x is JsonValue v && v.TryGetValue<string>(out _))
            ? list.Select(x => x!.GetValue<string>()).ToList()
            : throw new BadRowError(row.Fields[field] is null ? "missing field" : "wrong type", $"{row.Where}: '{field}' must be a list of strings.");

    /// <summary>Each step's label as an integer class: true/false are 1/0, as the column cast to int64 makes them.</summary>
    static List<int> Labels(Row row)
    {
        if (row.Fields["labels"] is not JsonArray list)
            throw new BadRowError(row.Fields["labels"] is null ? "missing field" : "wrong type", $"{row.Where}: 'labels' must be a list of booleans or integers.");
        return list.Select(x => x is JsonValue v
            ? v.TryGetValue<bool>(out var b) ? (b ? 1 : 0)
            : v.TryGetValue<long>(out var n) && n is >= 0 and <= int.MaxValue ? (int)n
            : throw new BadRowError("wrong type", $"{row.Where}: 'labels' holds {x.ToJsonString()}, not a boolean or a class number.")
            : throw new BadRowError("wrong type", $"{row.Where}: 'labels' must be a list of booleans or integers.")).ToList();
    }
}
