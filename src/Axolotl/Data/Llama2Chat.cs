using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>
/// Axolotl's legacy <c>type: llama2_chat</c> (FastChat's Llama-2 conversation): ShareGPT rows (<c>conversations</c>
/// of human/gpt turns, an optional leading system turn) rendered as "[INST] &lt;&lt;SYS&gt;&gt;…" text and tokenised
/// whole; the loss is taken on the gpt answers only, located by re-tokenising each turn as FastChat does. Axolotl pads
/// the row to sequence_len here; padding is left to the collator, so the example is the unpadded prefix.
/// </summary>
internal sealed class Llama2Chat(StrategyContext c) : IPromptStrategy
{
    const string DefaultSystem =
        "[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. " +
        "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. " +
        "Please ensure that your responses are socially unbiased and positive in nature.\n\n" +
        "If a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. " +
        "If you don't know the answer to a question, please don't share false information.\n<</SYS>>\n\n";
    const string User = "[INST]", Assistant = "[/INST]", Sep = " ", Sep2 = " </s><s>";

    public string Prompt(Row row)
    {
        if (row.Fields["conversations"] is not JsonArray source)
            throw new BadRowError("missing field", $"{row.Where}: missing field 'conversations' (a list of {{from, value}}).");
        var turns = source.Select((m, i) => (From: (string?)m?["from"], Value: m?["value"] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null)).ToList();
        var system = DefaultSystem;
        if (turns.Count > 0 && turns[0].From == "system")
        {
            system = $"[INST] <<SYS>>\n{turns[0].Value}\n<</SYS>>\n\n";
            turns.RemoveAt(0);
        }
        if (turns.Count < 2) throw new BadRowError("empty conversation", $"{row.Where}: a llama2_chat conversation needs at least a human and a gpt turn.");
        string Role(string? from) => from switch
        {
            "human" => User, "gpt" => Assistant,
            _ => throw new BadRowError("unknown role", $"{row.Where}: llama2_chat turns are from human or gpt, not '{from}'."),
        };
        if (Role(turns[0].From) != User) turns.RemoveAt(0);
        var messages = new List<(string Role, string Text)>();
        for (int j = 0; j < turns.Count; j++)
        {
            var role = Role(turns[j].From);
            if (role != (j % 2 == 0 ? User : Assistant)) throw new BadRowError("unknown role", $"{row.Where}: turns must alternate human, gpt (turn {j + 1} does not).");
            if (!string.IsNullOrEmpty(turns[j].Value)) messages.Add((role, turns[j].Value!));
        }
        var text = new StringBuilder();
        for (int i = 0; i < messages.Count; i++)
        {
            if (i == messages.Count - 1 && messages[i].Role == User) break; // a trailing question has no answer to train on
            if (i == 0) text.Append(system).Append(messages[i].Text.Trim());
            else text.Append(messages[i].Role).Append(' ').Append(messages[i].Text.Trim()).Append(i % 2 == 0 ? Sep : Sep2);
        }
        return text.ToString();
    }

    public IEnumerable<Example> Tokenize(Row row)
    {
        var tokenizer = c.Tokenizer();
        var conversation = Prompt(row);
        var ids = tokenizer.Encode(conversation).Take(c.SequenceLen).ToArray();
        var labels = (int[])ids.Clone();
        int total = ids.Length, cur = 1;
        labels[0] = Example.IgnoreIndex;
        foreach (var turn in conversation.Split(Sep2))
        {
            if (turn == "") break;
            int turnLength = tokenizer.Encode(turn).Count;
            var parts = turn.Split(Assistant);
            if (parts.Length != 2) break;
            // FastChat's arithmetic: "-1" for the BOS the instruction's tokenisation adds, "+2" for the separator tokens.
            int instructionLength = tokenizer.Encode(parts[0] + Assistant).Count - 1;
            for (int i = Math.Max(cur - 1, 0); i < Math.Min(cur + instructionLength, total); i++) labels[i] = Example.IgnoreIndex;
            cur += turnLength + 2;
        }
        for (int i = cur; i < total; i++) labels[i] = Example.IgnoreIndex;
        if (cur < c.SequenceLen && cur != total) Array.Fill(labels, Example.IgnoreIndex); // Axolotl's "tokenization mismatch": nothing trained
        // Llama's tokenizer writes "[" after EOS as 29961 where the original implementation has 518.
        for (int i = 2; i < total - 2; i++)
        {
            if (ids[i] == 29961) ids[i] = 518;
            if (labels[i] == 29961) labels[i] = 518;
        }
        yield return new Example(ids, labels);
    }
}
