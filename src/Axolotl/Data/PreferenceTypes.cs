using Axolotl.Config;
using System.Text.Json.Nodes;
using Axolotl.Templates;

namespace Axolotl.Data;

/// <summary>
/// A preference pair as Axolotl's transform hands it to TRL: a prompt and two completions, as text. With
/// <see cref="Rendered"/> (TRL's conversational rows, rendered by the chat template), <see cref="Chosen"/> and
/// <see cref="Rejected"/> hold the whole rendered conversation and are tokenized without special tokens, with no EOS added.
/// </summary>
internal sealed record PreferenceText(string Prompt, string Chosen, string Rejected)
{
    public bool Rendered { get; init; }
}

/// <summary>An unpaired KTO example: a prompt, one completion and whether it is desirable.</summary>
internal sealed record KtoText(string Prompt, string Completion, bool Label)
{
    public bool Rendered { get; init; }
}

/// <summary>The dataset keys the preference types read (Axolotl's defaults); user_defined's formats among them.</summary>
internal sealed record PreferenceFormat
{
    public string FieldPrompt { get; init; } = "prompt";
    public string FieldSystem { get; init; } = "system";
    public string FieldChosen { get; init; } = "chosen";
    public string FieldRejected { get; init; } = "rejected";
    public string FieldCompletion { get; init; } = "completion";
    public string FieldLabel { get; init; } = "label";
    public string FieldMessages { get; init; } = "messages";
    public string? PromptFormat { get; init; }
    public string? ChosenFormat { get; init; }
    public string? RejectedFormat { get; init; }
    public string? CompletionFormat { get; init; }
    public IReadOnlyDictionary<string, string>? MessagePropertyMappings { get; init; }
    /// <summary>Target role → the dataset's role names (Axolotl's <c>roles</c>).</summary>
    public IReadOnlyDictionary<string, IReadOnlyList<string>>? Roles { get; init; }
}

/// <summary>
/// Axolotl's preference dataset types (src/axolotl/prompt_strategies/{dpo,kto,orpo}): each turns a row into the
/// prompt/chosen/rejected (KTO: prompt/completion/label) strings TRL tokenizes. A type without a dot is its
/// <c>.default</c>, as Axolotl's loader reads it.
/// </summary>
internal static class PreferenceTypes
{
    // The names themselves are registered in the config layer, which refuses the others before any data is read.
    static string Canonical(string? type) => Config.DatasetTypes.Preference.Canonical(type);
    static IReadOnlyList<string> For(RlMethod rl) => Config.DatasetTypes.Preference.For(rl);

    /// <summary>The transform of a DPO/IPO/SimPO/ORPO type; bad rows throw <see cref="BadRowError"/> naming file, line and field.</summary>
    public static Func<Row, PreferenceText> Pairs(RlMethod rl, string type, PreferenceFormat f, Func<IChatTemplate> template)
    {
        type = Canonical(type);
        if (!For(rl).Contains(type))
            throw new UserError($"dataset type '{type}' is not a {ConfigLoader.Spelling(rl)} type; use one of {string.Join(", ", For(rl))}.");
        var (module, name) = (type[..type.IndexOf('.')], type[(type.IndexOf('.') + 1)..]);
        if (module is "chatml" or "llama3")
        {
            var turns = module == "chatml" ? ChatML : Llama3;
            return name switch
            {
                "default" => r =>
                {
                    string promptKey = FirstPresent(r, "prompt", "input", "question") ?? "instruction";
                    string chosenKey = r.Fields.ContainsKey("chosen") ? "chosen" : "chosen_response";
                    string rejectedKey = r.Fields.ContainsKey("rejected") ? "rejected" : "rejected_response";
                    return turns.Pair(r, Str(r, promptKey), Str(r, chosenKey), Str(r, rejectedKey));
                },
                "argilla_chat" => r => turns.Pair(r, Turn(r, "chosen", 0), Turn(r, "chosen", 1), Turn(r, "rejected", 1), withSystem: false),
                "icr" => r => turns.Pair(r, Str(r, "input"), Str(r, "chosen"), Str(r, "rejected")),
                "intel" => r => turns.Pair(r, Str(r, "question"), Str(r, "chosen"), Str(r, "rejected")),
                "prompt_pairs" => r => turns.Pair(r, Str(r, "prompt"), Str(r, "chosen"), Str(r, "rejected")),
                "ultra" => r => turns.Pair(r, Str(r, "prompt"), Turn(r, "chosen", 1), Turn(r, "rejected", 1)),
                _ => throw new InvalidOperationException(type),
            };
        }
        return type switch
        {
            "zephyr.nectar" => Nectar,
            "user_defined.default" => r => new PreferenceText(
                UserPrompt(r, f), Prompter.Format(f.ChosenFormat ?? "{chosen}", ("chosen", Str(r, f.FieldChosen))),
                Prompter.Format(f.RejectedFormat ?? "{rejected}", ("rejected", Str(r, f.FieldRejected)))),
            "passthrough.default" => r => Passthrough(r, template),
            "chat_template.default" => r => ChatTemplatePair(r, f, template(), argilla: false),
            "chat_template.argilla_chat" => r => ChatTemplatePair(r, f, template(), argilla: true),
            "chat_template.argilla" => r => OrpoArgilla(r, template()),
            _ => throw new InvalidOperationException(type),
        };
    }

    /// <summary>The transform of a KTO type.</summary>
    public static Func<Row, KtoText> Unpaired(string type, PreferenceFormat f)
    {
        type = Canonical(type);
        if (!Config.DatasetTypes.Preference.Kto.Contains(type))
            throw new UserError($"dataset type '{type}' is not a kto type; use one of {string.Join(", ", Config.DatasetTypes.Preference.Kto)}.");
        if (type == "user_defined.default")
            return r =>
            {
                string prompt = f.PromptFormat is { Length: > 0 } format && format.Contains("{system}") && PromptStrategies.OptionalString(r, f.FieldSystem) is { Length: > 0 } system
                    ? Prompter.Format(format, ("system", system), ("prompt", Str(r, f.FieldPrompt)))
                    : Prompter.Format(f.PromptFormat is { Length: > 0 } p ? p : "{prompt}", ("prompt", Str(r, f.FieldPrompt)));
                return new KtoText(prompt, Prompter.Format(f.CompletionFormat is { Length: > 0 } c ? c : "{completion}", ("completion", Str(r, f.FieldCompletion))), Label(r, f.FieldLabel));
            };
        var turns = type.StartsWith("chatml.") ? ChatML : Llama3;
        return type[(type.IndexOf('.') + 1)..] switch
        {
            "argilla" => r => turns.Single(r, Str(r, "instruction"), Str(r, "completion"), true),
            "argilla_chat" => r => turns.Single(r, Turn(r, "completion", 0), Turn(r, "completion", 1), false),
            "intel" => r => turns.Single(r, Str(r, "question"), Str(r, "completion"), true),
            _ => r => turns.Single(r, Str(r, "prompt"), Str(r, "completion"), true),
        };
    }

    /// <summary>A chat format's turn markup, as Axolotl's chatml.py and llama3.py write it.</summary>
    sealed record Turns(string System, string User, string End)
    {
        public PreferenceText Pair(Row r, string prompt, string chosen, string rejected, bool withSystem = true) =>
            new(Prompt(r, prompt, withSystem), chosen + End, rejected + End);

        public KtoText Single(Row r, string prompt, string completion, bool withSystem) =>
            new(Prompt(r, prompt, withSystem), completion + End, Label(r, "label"));

        string Prompt(Row r, string prompt, bool withSystem)
        {
            var head = withSystem && PromptStrategies.OptionalString(r, "system") is { Length: > 0 } system ? string.Format(System, system) : "";
            return head + string.Format(User, prompt);
        }
    }

    static readonly Turns ChatML = new("<|im_start|>system\n{0}<|im_end|>\n", "<|im_start|>user\n{0}<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>");
    static readonly Turns Llama3 = new("<|start_header_id|>system<|end_header_id|>\n\n{0}<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n{0}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>");

    static string Str(Row r, string field) => PromptStrategies.Str(r, field);

    static string? FirstPresent(Row r, params string[] fields) => fields.FirstOrDefault(r.Fields.ContainsKey);

    /// <summary>The content of message <paramref name="index"/> of the message list in <paramref name="field"/>.</summary>
    static string Turn(Row r, string field, int index)
    {
        if (r.Fields[field] is not JsonArray list)
            throw new BadRowError("missing field", $"{r.Where}: field '{field}' must be a list of messages.");
        if (index >= list.Count || list[index] is not JsonObject message || message["content"] is not JsonValue v || !v.TryGetValue<string>(out var text))
            throw new BadRowError("wrong type", $"{r.Where}: field '{field}' needs a message {index} with a string 'content'.");
        return text;
    }

    static bool Label(Row r, string field) => r.Fields[field] switch
    {
        null => throw new BadRowError("missing field", $"{r.Where}: missing field '{field}' (true for a desirable completion, false otherwise)."),
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        _ => throw new BadRowError("wrong type", $"{r.Where}: field '{field}' must be true or false."),
    };

    static string UserPrompt(Row r, PreferenceFormat f)
    {
        var format = f.PromptFormat is { Length: > 0 } p ? p : "{prompt}";
        return format.Contains("{system}")
            ? Prompter.Format(format, ("system", PromptStrategies.OptionalString(r, f.FieldSystem) ?? ""), ("prompt", Str(r, f.FieldPrompt)))
            : Prompter.Format(format, ("prompt", Str(r, f.FieldPrompt)));
    }

    /// <summary>zephyr.nectar: the two best-ranked answers (highest rank chosen), the prompt in Zephyr's markup.</summary>
    static PreferenceText Nectar(Row r)
    {
        if (r.Fields["answers"] is not JsonArray answers || answers.Count < 2)
            throw new BadRowError("missing field", $"{r.Where}: field 'answers' must be a list of at least two {{answer, rank}} objects.");
        var ranked = answers.Select((a, i) => (Answer: (string?)a?["answer"], Rank: a?["rank"]?.GetValue<double>() ?? double.NaN, Index: i))
            .OrderBy(a => a.Rank).ThenBy(a => a.Index).ToList();
        if (ranked.Any(a => a.Answer is null || double.IsNaN(a.Rank)))
            throw new BadRowError("wrong type", $"{r.Where}: each of 'answers' needs a string 'answer' and a numeric 'rank'.");
        return new PreferenceText($"<|system|>\n</s>\n<|user|>\n{Str(r, "prompt")}</s>\n<|assistant|>\n", ranked[^1].Answer!, ranked[^2].Answer!);
    }

    /// <summary>
    /// passthrough: the row already holds TRL's prompt/chosen/rejected, as text, or as message lists (TRL's
    /// conversational format, rendered by the chat template with and without the generation prompt).
    /// </summary>
    static PreferenceText Passthrough(Row r, Func<IChatTemplate> template)
    {
        if (r.Fields["prompt"] is JsonArray prompt)
        {
            var chat = template();
            JsonArray Join(string field) => r.Fields[field] is JsonArray completion
                ? new JsonArray([.. prompt.Select(m => m!.DeepClone()), .. completion.Select(m => m!.DeepClone())])
                : throw new BadRowError("wrong type", $"{r.Where}: field '{field}' must be a list of messages, as 'prompt' is.");
            return new PreferenceText(chat.Render((JsonArray)prompt.DeepClone(), addGenerationPrompt: true), chat.Render(Join("chosen")), chat.Render(Join("rejected"))) { Rendered = true };
        }
        return new PreferenceText(Str(r, "prompt"), Str(r, "chosen"), Str(r, "rejected"));
    }

    /// <summary>
    /// chat_template.default / argilla_chat: the prompt is the conversation rendered with the generation prompt; each
    /// completion is its message rendered after a dummy user turn, from where its content starts, right-trimmed.
    /// </summary>
    static PreferenceText ChatTemplatePair(Row r, PreferenceFormat f, IChatTemplate template, bool argilla)
    {
        var roleKey = f.MessagePropertyMappings?.GetValueOrDefault("role") ?? "role";
        var contentKey = f.MessagePropertyMappings?.GetValueOrDefault("content") ?? "content";
        var roles = new Dictionary<string, string>();
        foreach (var (target, sources) in f.Roles ?? new Dictionary<string, IReadOnlyList<string>>
                 { ["user"] = ["user"], ["assistant"] = ["assistant"], ["system"] = ["system"], ["tool"] = ["tool"] })
            foreach (var s in sources) roles[s] = target;

        JsonObject Message(JsonNode? node, string field)
        {
            if (node is not JsonObject m || m[roleKey] is not JsonValue rv || !rv.TryGetValue<string>(out var role) || m[contentKey] is not JsonValue cv || !cv.TryGetValue<string>(out var content))
                throw new BadRowError("wrong type", $"{r.Where}: field '{field}' needs messages with string '{roleKey}' and '{contentKey}'.");
            if (!roles.TryGetValue(role, out var mapped))
                throw new BadRowError("unknown role", $"{r.Where}: field '{field}' has a message with role '{role}', which `roles` does not map.");
            return new JsonObject { ["role"] = mapped, ["content"] = content };
        }
        JsonObject Response(string field) => r.Fields[field] switch
        {
            null => throw new BadRowError("missing field", $"{r.Where}: missing field '{field}'."),
            JsonValue v when v.TryGetValue<string>(out var text) => new JsonObject { ["role"] = "assistant", ["content"] = text },
            JsonObject o => Message(o, field),
            JsonArray { Count: > 0 } list => Message(list[^1], field),
            _ => throw new BadRowError("wrong type", $"{r.Where}: field '{field}' must be a string, a message or a list of messages."),
        };

        JsonArray messages;
        if (argilla)
        {
            if (r.Fields[f.FieldChosen] is not JsonArray chosenList || chosenList.Count == 0)
                throw new BadRowError("missing field", $"{r.Where}: field '{f.FieldChosen}' must be a list of messages.");
            messages = new JsonArray(chosenList.Take(chosenList.Count - 1).Select(m => (JsonNode)Message(m, f.FieldChosen)).ToArray());
        }
        else
            messages = r.Fields[f.FieldMessages] switch
            {
                JsonValue v when v.TryGetValue<string>(out var text) => new JsonArray(new JsonObject { ["role"] = "user", ["content"] = text }),
                JsonArray list => new JsonArray(list.Select(m => (JsonNode)Message(m, f.FieldMessages)).ToArray()),
                null => throw new BadRowError("missing field", $"{r.Where}: missing field '{f.FieldMessages}'."),
                _ => throw new BadRowError("wrong type", $"{r.Where}: field '{f.FieldMessages}' must be a list of messages."),
            };

        string Completion(JsonObject response)
        {
            var rendered = template.Render(new JsonArray(new JsonObject { ["role"] = "user", ["content"] = "[[dummy_message]]" }, response));
            var content = (string)response["content"]!;
            // Python's str.find returns -1 when absent, so the slice keeps only the last character.
            int at = rendered.IndexOf(content, StringComparison.Ordinal);
            return (at < 0 ? rendered[^1..] : rendered[at..]).TrimEnd();
        }
        return new PreferenceText(template.Render(messages, addGenerationPrompt: true), Completion(Response(f.FieldChosen)), Completion(Response(f.FieldRejected)));
    }

    /// <summary>
    /// ORPO's chat_template.argilla: system (optional), then the chosen list's user turns (or <c>prompt</c>) and earlier
    /// assistant turns as the prompt; each completion is the rendered conversation with its last answer, after the prompt's text.
    /// </summary>
    static PreferenceText OrpoArgilla(Row r, IChatTemplate template)
    {
        if (r.Fields["chosen"] is not JsonArray chosen || r.Fields["rejected"] is not JsonArray rejected || chosen.Count == 0 || rejected.Count == 0)
            throw new BadRowError("missing field", $"{r.Where}: fields 'chosen' and 'rejected' must be lists of messages.");
        if (chosen.Count % 2 != 0)
            throw new BadRowError("wrong type", $"{r.Where}: field 'chosen' must hold alternating user/assistant turns (an even number).");
        string Content(JsonArray list, int i, string field) => list[i]?["content"] is JsonValue v && v.TryGetValue<string>(out var s) ? s
            : throw new BadRowError("wrong type", $"{r.Where}: field '{field}' message {i} needs a string 'content'.");
        JsonObject M(string role, string content, bool label) => new() { ["role"] = role, ["content"] = content, ["label"] = label };

        var prompt = new List<JsonObject>();
        if (PromptStrategies.OptionalString(r, "system") is { Length: > 0 } system) prompt.Add(M("system", system, false));
        int turns = chosen.Count / 2;
        for (int i = 0; i < turns; i++)
        {
            prompt.Add(M("user", r.Fields.ContainsKey("prompt") ? Str(r, "prompt") : Content(chosen, 2 * i, "chosen"), false));
            if (i < turns - 1) prompt.Add(M("assistant", Content(chosen, 2 * i + 1, "chosen"), false));
        }
        JsonArray With(JsonObject? last) => new([.. prompt.Select(m => m.DeepClone()), .. last is null ? [] : new JsonNode[] { last }]);
        var promptText = template.Render(With(null), addGenerationPrompt: true);
        string After(string text) => text.Length >= promptText.Length ? text[promptText.Length..] : "";
        return new PreferenceText(promptText,
            After(template.Render(With(M("assistant", Content(chosen, chosen.Count - 1, "chosen"), true)))),
            After(template.Render(With(M("assistant", Content(rejected, rejected.Count - 1, "rejected"), true)))));
    }
}
