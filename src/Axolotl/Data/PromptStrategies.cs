using System.Text.Json.Nodes;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>One training sequence: token ids and their labels (-100 where no loss is taken).</summary>
public sealed record Example(int[] InputIds, int[] Labels)
{
    public const int IgnoreIndex = -100;
    public int TrainableTokens => Labels.Count(l => l != IgnoreIndex);
}

/// <summary>Turns one dataset row into zero or more examples. Pure: the same row always gives the same ids.</summary>
public interface IPromptStrategy
{
    IEnumerable<Example> Tokenize(Row row);
}

public static class PromptStrategies
{
    /// <summary>The strategy for a dataset's <c>type:</c> (null: pre-tokenized rows).</summary>
    public static IPromptStrategy For(string? type, Func<Tokenizer> tokenizer, int sequenceLen, bool trainOnInputs, string? field) => type switch
    {
        null => new PreTokenized(),
        "alpaca" => new Alpaca(tokenizer(), sequenceLen, trainOnInputs),
        "completion" => new Completion(tokenizer(), sequenceLen, field ?? "text"),
        _ => throw new UserError($"dataset type '{type}' is not implemented yet."),
    };

    internal static string RequiredString(Row row, string field)
    {
        var node = row.Fields[field];
        if (node is null) throw new UserError($"{row.Where}: missing field '{field}'.");
        if (node is not JsonValue v || !v.TryGetValue<string>(out var text))
            throw new UserError($"{row.Where}: field '{field}' must be a string.");
        return text;
    }

    internal static string? OptionalString(Row row, string field) =>
        row.Fields[field] is JsonValue v && v.TryGetValue<string>(out var text) ? text : null;
}

/// <summary>
/// Axolotl's tokenisation of one prompt part (PromptTokenizingStrategy._tokenize): truncate to the sequence length,
/// append EOS when asked and there is room, and drop a leading BOS when asked.
/// </summary>
static class PartTokenizer
{
    public static List<int> Tokenize(Tokenizer tokenizer, string text, int maxLength, bool addEos, bool stripBos)
    {
        var ids = tokenizer.Encode(text, addSpecialTokens: true).Take(maxLength).ToList();
        if (addEos && tokenizer.EosTokenId is int eos && ids.Count < maxLength && (ids.Count == 0 || ids[^1] != eos))
            ids.Add(eos);
        if (stripBos && ids.Count > 0 && tokenizer.BosTokenId is int bos && ids[0] == bos)
            ids.RemoveAt(0);
        return ids;
    }
}

/// <summary>
/// Axolotl's <c>type: alpaca</c> (instruct style): the prompt is tokenised without EOS and masked unless
/// train_on_inputs; the response is tokenised separately, its BOS stripped and EOS appended.
/// </summary>
public sealed class Alpaca(Tokenizer tokenizer, int sequenceLen, bool trainOnInputs) : IPromptStrategy
{
    const string SystemWithInput =
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n";
    const string SystemNoInput = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n";

    public static string Prompt(string instruction, string? input) =>
        string.IsNullOrEmpty(input)
            ? $"{SystemNoInput}### Instruction:\n{instruction}\n\n### Response:\n"
            : $"{SystemWithInput}### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

    public IEnumerable<Example> Tokenize(Row row)
    {
        var instruction = PromptStrategies.RequiredString(row, "instruction");
        var input = PromptStrategies.OptionalString(row, "input");
        var output = PromptStrategies.RequiredString(row, "output");
        var prompt = PartTokenizer.Tokenize(tokenizer, Prompt(instruction, input), sequenceLen, addEos: false, stripBos: false);
        var response = PartTokenizer.Tokenize(tokenizer, output, sequenceLen, addEos: true, stripBos: true);
        var ids = prompt.Concat(response).ToArray();
        var labels = (trainOnInputs ? prompt : Enumerable.Repeat(Example.IgnoreIndex, prompt.Count)).Concat(response).ToArray();
        yield return new Example(ids, labels);
    }
}

/// <summary>
/// Axolotl's <c>type: completion</c>: the whole text is trained on; it is tokenised (truncated at 64 × sequence_len,
/// EOS appended) and cut into sequence_len chunks.
/// </summary>
public sealed class Completion(Tokenizer tokenizer, int sequenceLen, string field) : IPromptStrategy
{
    public IEnumerable<Example> Tokenize(Row row)
    {
        var text = PromptStrategies.RequiredString(row, field);
        var ids = PartTokenizer.Tokenize(tokenizer, text, sequenceLen * 64, addEos: true, stripBos: false);
        for (int start = 0; start < ids.Count; start += sequenceLen)
        {
            var chunk = ids.GetRange(start, Math.Min(sequenceLen, ids.Count - start)).ToArray();
            yield return new Example(chunk, (int[])chunk.Clone());
        }
    }
}

/// <summary>Rows that already hold input_ids (and optionally labels and attention_mask), as Axolotl takes them with no type.</summary>
public sealed class PreTokenized : IPromptStrategy
{
    public IEnumerable<Example> Tokenize(Row row)
    {
        var ids = IntArray(row, "input_ids") ?? throw new UserError(
            $"{row.Where}: no 'input_ids'; a dataset without 'type' must be pre-tokenized (input_ids, attention_mask, labels). Did you forget 'type: alpaca'?");
        var labels = IntArray(row, "labels") ?? (int[])ids.Clone();
        if (labels.Length != ids.Length) throw new UserError($"{row.Where}: 'labels' has {labels.Length} entries but 'input_ids' has {ids.Length}.");
        var mask = IntArray(row, "attention_mask");
        if (mask != null)
        {
            if (mask.Length != ids.Length) throw new UserError($"{row.Where}: 'attention_mask' has {mask.Length} entries but 'input_ids' has {ids.Length}.");
            // Masked-out positions are padding: they must not be trained on.
            for (int i = 0; i < mask.Length; i++) if (mask[i] == 0) labels[i] = Example.IgnoreIndex;
        }
        yield return new Example(ids, labels);
    }

    static int[]? IntArray(Row row, string field)
    {
        if (row.Fields[field] is not JsonArray array) return null;
        try { return array.Select(x => x!.GetValue<int>()).ToArray(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new UserError($"{row.Where}: '{field}' must be a list of integers.");
        }
    }
}
