using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>One training sequence: token ids and their labels (-100 where no loss is taken).</summary>
internal sealed record Example(int[] InputIds, int[] Labels)
{
    public const int IgnoreIndex = -100;
    public int TrainableTokens => Labels.Count(l => l != IgnoreIndex);
}

/// <summary>Turns one dataset row into zero or more examples. Pure: the same row always gives the same ids.</summary>
internal interface IPromptStrategy
{
    IEnumerable<Example> Tokenize(Row row);
}

/// <summary>What a strategy needs besides the row: the tokenizer (loaded on first use) and the config's data keys.</summary>
internal sealed record StrategyContext(Func<Tokenizer> Tokenizer, int SequenceLen, bool TrainOnInputs)
{
    /// <summary>The chat template of a <c>type: chat_template</c> dataset (DatasetBuilder resolves it from the config).</summary>
    public Func<DatasetConfig, IChatTemplate>? ChatTemplate { get; init; }
    /// <summary>The config's <c>eot_tokens</c>; null: the tokenizer's EOS.</summary>
    public IReadOnlyList<string>? EotTokens { get; init; }
    /// <summary>Where a strategy's warnings about the config go (Axolotl logs them).</summary>
    public Action<string>? Warn { get; init; }
}

internal static class PromptStrategies
{
    static IReadOnlySet<string> Styles => DatasetTypes.Styles;
    static bool IsImplemented(string type) => DatasetTypes.IsImplemented(type);

    /// <summary>The strategy for a dataset's <c>type:</c> (unset: pre-tokenized rows; a mapping: user_defined).</summary>
    public static IPromptStrategy For(DatasetConfig d, StrategyContext c)
    {
        if (d.UserDefined is { } format) return UserDefined(format, c);
        if (d.Type is null) return new PreTokenized();
        var type = d.Type.EndsWith(".load", StringComparison.Ordinal) ? d.Type[..^5] : d.Type;
        var parts = type.Split(':', 2);
        var (baseType, style) = (parts[0], parts.Length > 1 ? parts[1] : "instruct");
        if (!IsImplemented(d.Type)) throw new UserError($"dataset type '{d.Type}' is not implemented" +
            (parts.Length > 1 && !Styles.Contains(style) ? $" (prompt styles are {string.Join(", ", Styles)})" : "") + ".");
        Instruction Make(Prompter p, Func<Row, Parts> fields) => new(c, p, fields);
        return baseType switch
        {
            "alpaca" => Make(Prompter.Alpaca(style), Fields.Alpaca),
            "jeopardy" => Make(Prompter.Alpaca(style), r => new(Str(r, "question"), Str(r, "category"), "what is " + Str(r, "answer"))),
            "oasst" => Make(Prompter.Alpaca(style), r => new(Str(r, "INSTRUCTION"), "", Str(r, "RESPONSE"))),
            "gpteacher" => Make(Prompter.Alpaca(style), r => new(Str(r, "instruction"), Opt(r, "input"), Str(r, "response"))),
            "summarizetldr" => Make(Prompter.SummarizeTldr, r => new(Str(r, "article"), "", Str(r, "summary"))),
            "explainchoice" => Make(Prompter.Alpaca(style) with { System = ExplainSystem, SystemNoInput = ExplainSystem }, Fields.Choice),
            "concisechoice" => Make(Prompter.ConciseChoice, Fields.Choice),
            "reflection" => new Reflection(c, style),
            "alpaca_chat" => Make(Prompter.Alpaca(d.Conversation ?? "chat"), Fields.Alpaca),
            "alpaca_chat.load_concise" => Make(Prompter.Alpaca("chat") with { System = ChatSystem, SystemNoInput = ChatSystemNoInput }, Fields.Alpaca),
            "alpaca_chat.load_qa" => Make(Prompter.Alpaca("chat") with { System = ChatSystem, SystemNoInput = ChatSystemNoInput }, r => new(Str(r, "question"), "", Str(r, "answer"))),
            "alpaca_chat.load_camel_ai" => Make(Prompter.Alpaca("chat") with { System = ChatSystem, SystemNoInput = ChatSystemNoInput }, r => new(Str(r, "message_1"), "", Str(r, "message_2"))),
            "alpaca_chat.load_no_prompt" => Make(Prompter.Alpaca("chat") with { System = "", SystemNoInput = "" }, Fields.Alpaca),
            "alpaca_instruct" => Make(Prompter.Alpaca("instruct"), Fields.Alpaca),
            "alpaca_instruct.load_no_prompt" => Make(Prompter.Alpaca("instruct") with { System = "", SystemNoInput = "" }, Fields.Alpaca),
            "alpaca_w_system" or "alpaca_w_system.load_chat" => Make(Prompter.SystemData("chat"), Fields.WithSystem),
            "alpaca_w_system.load_instruct" => Make(Prompter.SystemData("instruct"), Fields.WithSystem),
            "alpaca_w_system.load_open_orca" => Make(Prompter.OpenOrca("instruct"), Fields.OpenOrca),
            "alpaca_w_system.load_open_orca_chatml" => Make(Prompter.OpenOrca("chatml"), Fields.OpenOrca),
            "context_qa" => Make(Prompter.Alpaca("chat") with { System = ContextSystem, SystemNoInput = ContextSystem },
                r => new(Str(r, "article") + "\n===\n" + Str(r, "question"), "", Str(r, "answer"))),
            "context_qa.load_404" => Make(Prompter.Alpaca("chat") with { System = ContextSystem, SystemNoInput = ContextSystem },
                r => new(Str(r, "article") + "\n===\n" + Str(r, "unanswerable_question"), "", NoInformation)),
            "context_qa.load_v2" => Make(new Prompter("", "", "{system}", "{instruction}\n{input}", "{instruction}"),
                r => new("Context: " + Str(r, "context") + "\nQuestion: " + Str(r, "question") + "\n", "", "Answer: " + Str(r, "answer"))),
            "metharme" => new Instruction(c, new Prompter("", "", "", "{instruction}", "{instruction}"),
                r => new(Str(r, "prompt"), "", Str(r, "generation")), responseEosCount: 3),
            "input_output" => new InputOutput(c),
            "llama2_chat" => new Llama2Chat(c),
            "completion" => new Completion(c.Tokenizer(), c.SequenceLen, d.Field ?? "text"),
            "chat_template" => new ChatTemplateStrategy(c, d, c.ChatTemplate?.Invoke(d) ?? throw new InvalidOperationException("no chat template resolver")),
            DatasetTypes.Reward.Stepwise => StepwiseSupervised.For(d, c),
            _ => throw new UserError($"dataset type '{d.Type}' is not implemented."),
        };
    }

    const string ExplainSystem = "Choose the answer that best answers the question. Explain your reasoning.\n";
    const string ChatSystem = "Below is an instruction from a USER that describes a task, paired with an input that provides further context. The ASSISTANT writes a response that concisely and appropriately completes the request.\n\n";
    const string ChatSystemNoInput = "Below is an instruction from a USER that describes a task. The ASSISTANT writes a response that appropriately and concisely completes the request.\n\n";
    const string ContextSystem = "Use the following contextual information to concisely answer the question.\n";
    const string NoInformation = "The context provided does not contain any information about your inquiry. Therefore, I'm unable to answer your question based on the given context.";

    static IPromptStrategy UserDefined(UserDefinedFormat f, StrategyContext c) =>
        new Instruction(c, new Prompter("", "", f.SystemFormat, f.Format, f.NoInputFormat, SystemFromData: true),
            r => new(Str(r, f.FieldInstruction), Opt(r, f.FieldInput), Opt(r, f.FieldOutput), r.Fields.ContainsKey(f.FieldSystem) ? Opt(r, f.FieldSystem) : f.SystemPrompt));

    static class Fields
    {
        public static Parts Alpaca(Row r) => new(Str(r, "instruction"), Opt(r, "input"), Str(r, "output"));
        public static Parts WithSystem(Row r) => new(Str(r, "instruction"), Opt(r, "input"), Str(r, "output"), Str(r, "system"));
        public static Parts OpenOrca(Row r) => new(Str(r, "question"), "", Str(r, "response"), Str(r, "system_prompt"));

        public static Parts Choice(Row r)
        {
            if (r.Fields["choices"] is not JsonArray choices)
                throw new BadRowError("missing field", $"{r.Where}: missing field 'choices' (a list of strings).");
            var input = string.Join("\n", choices.Select(x => $"- \"{x}\""));
            return new(Str(r, "question"), input, r.Fields.ContainsKey("solution") ? Str(r, "solution") : Str(r, "explanation"));
        }
    }

    public static string Str(Row row, string field) => RequiredString(row, field);
    public static string Opt(Row row, string field) => OptionalString(row, field) ?? "";

    internal static string RequiredString(Row row, string field)
    {
        var node = row.Fields[field];
        if (node is null) throw new BadRowError("missing field", $"{row.Where}: missing field '{field}'.");
        if (node is not JsonValue v || !v.TryGetValue<string>(out var text))
            throw new BadRowError("wrong type", $"{row.Where}: field '{field}' must be a string.");
        return text;
    }

    internal static string? OptionalString(Row row, string field)
    {
        var node = row.Fields[field];
        if (node is null) return null;
        if (node is not JsonValue v || !v.TryGetValue<string>(out var text))
            throw new BadRowError("wrong type", $"{row.Where}: field '{field}' must be a string.");
        return text;
    }
}

/// <summary>The text parts of one instruction row; <see cref="System"/> only for prompters that take it from the data.</summary>
internal sealed record Parts(string Instruction, string Input, string Output, string? System = null);

/// <summary>
/// Axolotl's AlpacaPrompter family: a system text (with and without input), the format that wraps it, and the turn
/// formats. With <see cref="SystemFromData"/>, the system text comes from the row (SystemDataPrompter).
/// </summary>
internal sealed record Prompter(string System, string SystemNoInput, string SystemFormat, string Turn, string TurnNoInput, bool SystemFromData = false)
{
    const string AlpacaSystem = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.";
    const string AlpacaSystemNoInput = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

    static (string SystemFormat, string Turn, string TurnNoInput) Style(string style) => style switch
    {
        "instruct" => ("{system}\n\n", "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n", "### Instruction:\n{instruction}\n\n### Response:\n"),
        "chat" => ("SYSTEM: {system}\n", "USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:"),
        "chatml" => ("<|im_start|>system\n{system}<|im_end|>\n", "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
            "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"),
        "phi" => ("<|system|>\n{system}<|end|>\n", "<|user|>\n{instruction}<|end|>{input}<|assistant|>", "<|user|>\n{instruction}<|end|>\n<|assistant|>\n"),
        _ => throw new UserError($"prompt style '{style}' is not one of instruct, chat, chatml, phi."),
    };

    public static Prompter Alpaca(string style)
    {
        var (systemFormat, turn, noInput) = Style(style);
        return new(AlpacaSystem, AlpacaSystemNoInput, systemFormat, turn, noInput);
    }

    public static Prompter SystemData(string style) => Alpaca(style) with { System = "", SystemNoInput = "", SystemFromData = true };

    public static Prompter OpenOrca(string style) => style == "chatml" ? SystemData("chatml")
        : new("", "", "### System:\n{system}\n", "### Human:\n{instruction}\n### Additional Context:\n{input}\n### Assistant:\n", "### Human:\n{instruction}\n### Assistant:\n", SystemFromData: true);

    public static readonly Prompter ConciseChoice = new(
        "Choose the answer that best answers the question. Be concise in your response.\n\n",
        "Choose the answer that best answers the question. Be concise in your response.\n\n",
        "{system}", "USER: {instruction}\n{input}\nASSISTANT:", "USER: {instruction}\nASSISTANT:");

    public static readonly Prompter SummarizeTldr = new("", "", "{system}",
        "USER: Summarize the following article as a TL;DR.\n{instruction}\n{input}\nASSISTANT:",
        "USER: Summarize the following article as a TL;DR.\n{instruction}\nASSISTANT:");

    /// <summary>The prompt without the response, as Axolotl's build_prompt (or build_prompt_w_system) makes it.</summary>
    public string Build(Parts p)
    {
        bool hasInput = p.Input.Length > 0;
        var system = SystemFromData ? p.System ?? "" : hasInput ? System : SystemNoInput;
        var head = system.Length > 0 && SystemFormat.Length > 0 ? Format(SystemFormat, ("system", system)) : "";
        return head + (hasInput ? Format(Turn, ("instruction", p.Instruction), ("input", p.Input)) : Format(TurnNoInput, ("instruction", p.Instruction)));
    }

    /// <summary>Python's str.format for named fields: one pass, so values are never re-read as placeholders; {{ and }} escape.</summary>
    public static string Format(string format, params (string Name, string Value)[] values)
    {
        var sb = new StringBuilder(format.Length + 64);
        for (int i = 0; i < format.Length; i++)
        {
            char ch = format[i];
            if (ch == '{' && i + 1 < format.Length && format[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (ch == '}' && i + 1 < format.Length && format[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (ch == '{')
            {
                int close = format.IndexOf('}', i);
                if (close < 0) throw new UserError($"format '{format}': a '{{' is never closed.");
                var name = format[(i + 1)..close];
                var match = values.FirstOrDefault(v => v.Name == name);
                if (match.Name is null) throw new UserError($"format '{format}': unknown field '{{{name}}}' (it can use {string.Join(", ", values.Select(v => "{" + v.Name + "}"))}).");
                sb.Append(match.Value);
                i = close;
                continue;
            }
            sb.Append(ch);
        }
        return sb.ToString();
    }
}

/// <summary>
/// Axolotl's tokenisation of one prompt part (PromptTokenizingStrategy._tokenize): empty text gives nothing; truncate
/// to the maximum length, append EOS (up to <paramref name="eosCount"/> times, metharme appends three) while there is
/// room, and drop a leading BOS when asked.
/// </summary>
static class PartTokenizer
{
    public static List<int> Tokenize(Tokenizer tokenizer, string text, int maxLength, bool addEos, bool stripBos, int eosCount = 1)
    {
        if (text.Length == 0) return [];
        var encoded = tokenizer.Encode(text, addSpecialTokens: true);
        var ids = new List<int>(Math.Min(encoded.Count, maxLength) + eosCount);
        for (int i = 0; i < encoded.Count && i < maxLength; i++) ids.Add(encoded[i]);
        if (ids.Count == 0) return ids;
        if (addEos && tokenizer.EosTokenId is int eos)
        {
            int add = ids[^1] == eos ? eosCount - 1 : eosCount;
            for (int k = 0; k < add && ids.Count < maxLength; k++) ids.Add(eos);
        }
        if (stripBos && tokenizer.BosTokenId is int bos && ids[0] == bos)
            ids.RemoveAt(0);
        return ids;
    }
}

/// <summary>
/// Axolotl's InstructionPromptTokenizingStrategy: the prompt is tokenised without EOS and masked unless
/// train_on_inputs; the response is tokenised on its own, its BOS stripped and EOS appended.
/// </summary>
internal sealed class Instruction(StrategyContext c, Prompter prompter, Func<Row, Parts> fields, int responseEosCount = 1) : IPromptStrategy
{
    public Prompter Prompter => prompter;

    public IEnumerable<Example> Tokenize(Row row)
    {
        var parts = fields(row);
        var tokenizer = c.Tokenizer();
        var prompt = PartTokenizer.Tokenize(tokenizer, prompter.Build(parts), c.SequenceLen, addEos: false, stripBos: false);
        var response = PartTokenizer.Tokenize(tokenizer, parts.Output, c.SequenceLen, addEos: true, stripBos: true, responseEosCount);
        var ids = new int[prompt.Count + response.Count];
        var labels = new int[ids.Length];
        prompt.CopyTo(ids, 0);
        response.CopyTo(ids, prompt.Count);
        if (c.TrainOnInputs) prompt.CopyTo(labels, 0);
        else Array.Fill(labels, Example.IgnoreIndex, 0, prompt.Count);
        response.CopyTo(labels, prompt.Count);
        yield return new Example(ids, labels);
    }
}

/// <summary>Axolotl's alpaca prompt in its default instruct style, up to "### Response:" (inference formats prompts with it).</summary>
internal static class AlpacaPrompt
{
    public static string Instruct(string instruction, string? input) => Prompter.Alpaca("instruct").Build(new Parts(instruction, input ?? "", ""));
}

/// <summary>
/// Axolotl's <c>type: reflection</c>: the whole text (prompt, thought, reflection, corrected answer) is tokenised at
/// once with EOS and BOS kept; the prompt's length in tokens is masked unless train_on_inputs.
/// </summary>
internal sealed class Reflection(StrategyContext c, string style) : IPromptStrategy
{
    const string System = "Below is an instruction that describes a task, paired with an input that provides further context. You, the Assistant, should generate a response as if it were an abstract for an academic or technical paper on the query along with a methodology. Then generate an Agent Reflection where you create a long form response as if from subject matter expert, be verbose, diligent, and creative in your application of knowledge, apply it through the lens of the response generated by the assistant. Look for flawed reasoning, faulty logic, or other mistakes in the method. Finally, generate a final response and method for the user with the Assistant abstract and Reflection analysis as augmentations to the generation\n\n";
    const string SystemNoInput = "Below is an instruction that describes a task. You, the Assistant, should generate a response as if it were an abstract for an academic or technical paper on the query along with a methodology. Then generate an Agent Reflection where you create a long form response as if from subject matter expert, be verbose, diligent, and creative in your application of knowledge, apply it through the lens of the response generated by the assistant. Look for flawed reasoning, faulty logic, or other mistakes in the method. Finally, generate a final response and method for the user with the Assistant abstract and Reflection analysis as augmentations to the generation\n\n";

    public string Prompt(string instruction, string input) => style == "chat"
        ? (input.Length > 0 ? Prompter.Format(System + "USER: {instruction}\n{input}\nASSISTANT:", ("instruction", instruction), ("input", input))
                            : Prompter.Format(SystemNoInput + "USER: {instruction}\nASSISTANT:", ("instruction", instruction)))
        : (input.Length > 0 ? Prompter.Format(System + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n", ("instruction", instruction), ("input", input))
                            : Prompter.Format(SystemNoInput + "### Instruction:\n{instruction}\n\n### Response:\n", ("instruction", instruction)));

    public string Label(string output, string reflection, string corrected) => Prompter.Format(style == "chat"
            ? "\nTHOUGHT: {output}\nASSISTANT REFLECTION: {reflection}\nASSISTANT:"
            : "### Thought:\n{output}\n\n### Agent Reflection:\n{reflection}\n\n### Final Response:\n{corrected}",
        ("output", output), ("reflection", reflection), ("corrected", corrected));

    public IEnumerable<Example> Tokenize(Row row)
    {
        if (style is not ("instruct" or "chat")) throw new UserError($"reflection has the prompt styles instruct and chat, not '{style}'.");
        var (instruction, input) = (PromptStrategies.Str(row, "instruction"), PromptStrategies.Opt(row, "input"));
        var (output, reflection, corrected) = (PromptStrategies.Str(row, "output"), PromptStrategies.Str(row, "reflection"), PromptStrategies.Str(row, "corrected"));
        var prompt = Prompt(instruction, input);
        var full = output.Length > 0 && reflection.Length > 0 && corrected.Length > 0 ? prompt + Label(output, reflection, corrected) : prompt;
        var tokenizer = c.Tokenizer();
        var ids = PartTokenizer.Tokenize(tokenizer, full, c.SequenceLen, addEos: true, stripBos: false).ToArray();
        var labels = (int[])ids.Clone();
        if (!c.TrainOnInputs)
        {
            int promptLength = PartTokenizer.Tokenize(tokenizer, prompt, c.SequenceLen, addEos: false, stripBos: false).Count;
            Array.Fill(labels, Example.IgnoreIndex, 0, Math.Min(promptLength, labels.Length));
        }
        yield return new Example(ids, labels);
    }
}

/// <summary>
/// Axolotl's <c>type: input_output</c>: each segment is tokenised without special tokens and trained on when its
/// <c>label</c> is true (or train_on_inputs); nothing is added or cut.
/// </summary>
internal sealed class InputOutput(StrategyContext c) : IPromptStrategy
{
    public IEnumerable<Example> Tokenize(Row row)
    {
        if (row.Fields["segments"] is not JsonArray segments)
            throw new BadRowError("missing field", $"{row.Where}: missing field 'segments' (a list of {{\"text\", \"label\"}}).");
        var tokenizer = c.Tokenizer();
        var ids = new List<int>();
        var labels = new List<int>();
        for (int i = 0; i < segments.Count; i++)
        {
            if (segments[i] is not JsonObject segment || segment["text"] is not JsonValue tv || !tv.TryGetValue<string>(out var text))
                throw new BadRowError("wrong type", $"{row.Where}: segments[{i}] must be an object with a string 'text'.");
            bool label = segment["label"] is JsonValue lv && lv.TryGetValue<bool>(out var b) && b;
            var part = tokenizer.Encode(text, addSpecialTokens: false);
            ids.AddRange(part);
            if (label || c.TrainOnInputs) labels.AddRange(part);
            else labels.AddRange(Enumerable.Repeat(Example.IgnoreIndex, part.Count));
        }
        yield return new Example(ids.ToArray(), labels.ToArray());
    }
}

/// <summary>
/// Axolotl's <c>type: completion</c>: the whole text is trained on; it is tokenised (truncated at 64 × sequence_len,
/// EOS appended) and cut into sequence_len chunks.
/// </summary>
internal sealed class Completion(Tokenizer tokenizer, int sequenceLen, string field) : IPromptStrategy
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
internal sealed class PreTokenized : IPromptStrategy
{
    public IEnumerable<Example> Tokenize(Row row)
    {
        var ids = IntArray(row, "input_ids") ?? throw new BadRowError("missing field",
            $"{row.Where}: no 'input_ids'; a dataset without 'type' must be pre-tokenized (input_ids, attention_mask, labels). Did you forget 'type: alpaca'?");
        var labels = IntArray(row, "labels") ?? (int[])ids.Clone();
        if (labels.Length != ids.Length) throw new BadRowError("wrong type", $"{row.Where}: 'labels' has {labels.Length} entries but 'input_ids' has {ids.Length}.");
        var mask = IntArray(row, "attention_mask");
        if (mask != null)
        {
            if (mask.Length != ids.Length) throw new BadRowError("wrong type", $"{row.Where}: 'attention_mask' has {mask.Length} entries but 'input_ids' has {ids.Length}.");
            // Masked-out positions are padding: they must not be trained on.
            for (int i = 0; i < mask.Length; i++) if (mask[i] == 0) labels[i] = Example.IgnoreIndex;
        }
        yield return new Example(ids, labels);
    }

    static int[]? IntArray(Row row, string field)
    {
        if (row.Fields[field] is not JsonArray array) return null;
        var ids = new int[array.Count];
        for (int i = 0; i < ids.Length; i++)
            if (!TryInt(array[i], out ids[i])) throw new BadRowError("wrong type", $"{row.Where}: '{field}' must be a list of integers.");
        return ids;
    }

    /// <summary>Parsed JSON holds numbers as text, Parquet and Arrow columns as longs (int64 or widened int32).</summary>
    static bool TryInt(JsonNode? node, out int value)
    {
        value = 0;
        if (node is not JsonValue v) return false;
        if (v.TryGetValue(out value)) return true;
        if (!v.TryGetValue(out long wide) || wide is < int.MinValue or > int.MaxValue) return false;
        value = (int)wide;
        return true;
    }
}
