using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Templates;
using Axolotl.Tokenization;

namespace Axolotl.Data;

/// <summary>
/// Axolotl's <c>type: chat_template</c>. The conversation is rendered with the template and tokenised whole (no
/// special tokens added: the template writes them). Each trainable turn's tokens are found as Axolotl finds them: render
/// the conversation up to that turn once with its real content and once with a dummy, and take the span where the two
/// token sequences differ. The EOS/EOT token following a turn (within 3 tokens) is trained per train_on_eos/eot.
/// </summary>
internal sealed class ChatTemplateStrategy : IPromptStrategy
{
    const string Dummy = "[[dummy_message]]", DummyReasoning = "[[dummy_reasoning]]";
    // Axolotl's split_thinking: the reasoning delimiters it looks for, in this order, and the answer delimiters after them.
    static readonly (string Open, string Close)[] ThinkingTags = [("<think>", "</think>"), ("<reasoning>", "</reasoning>"), ("<|begin_of_thought|>", "<|end_of_thought|>")];
    static readonly (string Open, string Close)[] SolutionTags = [("<|begin_of_solution|>", "<|end_of_solution|>")];

    /// <summary>A message as the template sees it, with the per-turn training flags Axolotl keeps beside it.</summary>
    sealed record Turn(JsonObject Message, JsonNode? Training = null, JsonNode? Detail = null, JsonNode? ReasoningDetail = null);

    enum Span { Whole, ContentOnly, ReasoningOnly }

    readonly StrategyContext c;
    readonly IChatTemplate template;
    readonly string fieldMessages, fieldSystem, fieldTools, thinkingKey;
    readonly string? fieldTraining, fieldTrainingDetail;
    readonly Dictionary<string, string> mappings;
    readonly Dictionary<string, string> roles;
    readonly HashSet<string> rolesToTrain;
    readonly TrainOnEnd trainOnEos, trainOnEot;
    readonly bool dropSystem, splitThinking;
    readonly HashSet<int> eotIds;

    public ChatTemplateStrategy(StrategyContext context, DatasetConfig d, IChatTemplate template)
    {
        c = context;
        this.template = template;
        fieldMessages = d.FieldMessages ?? "messages";
        fieldSystem = d.FieldSystem ?? "system";
        fieldTools = d.FieldTools ?? "tools";
        fieldTraining = d.MessageFieldTraining;
        fieldTrainingDetail = d.MessageFieldTrainingDetail;
        // Axolotl's config validation always fills role and content into message_property_mappings, so its prompter's
        // default (which would also map field_thinking) never applies; the reasoning reaches the template by passing through.
        mappings = d.MessagePropertyMappings is { Count: > 0 } m ? new(m) : [];
        mappings.TryAdd("role", "role");
        mappings.TryAdd("content", "content");
        // The deprecated message_field_role/content are the same mapping under older names.
        if (d.MessageFieldRole is { } r) mappings["role"] = r;
        if (d.MessageFieldContent is { } ct) mappings["content"] = ct;
        roles = d.Roles is { Count: > 0 } given
            ? given.SelectMany(kv => kv.Value.Select(source => (source, target: kv.Key))).ToDictionary(x => x.source, x => x.target)
            : new() { ["human"] = "user", ["user"] = "user", ["assistant"] = "assistant", ["gpt"] = "assistant", ["system"] = "system", ["tool"] = "tool" };
        rolesToTrain = (d.RolesToTrain ?? ["assistant"]).Select(x => roles.GetValueOrDefault(x, x)).ToHashSet();
        trainOnEos = d.TrainOnEos ?? TrainOnEnd.Turn;
        trainOnEot = d.TrainOnEot ?? trainOnEos;
        dropSystem = d.DropSystemMessage;
        splitThinking = d.SplitThinking;
        thinkingKey = d.TemplateThinkingKey is { Length: > 0 } k ? k : "reasoning_content";
        eotIds = EotIds(c.Tokenizer(), (template as JinjaChatTemplate)?.Template.Source);
    }

    public IEnumerable<Example> Tokenize(Row row)
    {
        var tokenizer = c.Tokenizer();
        var turns = Turns(row);
        var tools = Tools(row);
        var ids = Encode(tokenizer, turns, tools);
        var labels = new int[ids.Length];
        Array.Fill(labels, Example.IgnoreIndex);
        int? eos = tokenizer.EosTokenId;
        int lastEos = -1, lastEot = -1;
        for (int index = 0; index < turns.Count; index++)
        {
            var turn = turns[index];
            var role = (string?)turn.Message["role"];
            bool hasDetail = Truthy(turn.Detail), hasReasoningDetail = Truthy(turn.ReasoningDetail);
            bool shouldTrain = turn.Training != null ? Truthy(turn.Training)
                : turn.Detail != null || turn.ReasoningDetail != null ? hasDetail || hasReasoningDetail
                : c.TrainOnInputs || (role != null && rolesToTrain.Contains(role));
            if (!shouldTrain && trainOnEos != TrainOnEnd.All && trainOnEot != TrainOnEnd.All) continue;

            // With train_detail on a turn that has reasoning, the span is the content's alone (the dummy keeps the reasoning).
            bool hasReasoning = turn.Message[thinkingKey] != null;
            var (start, end) = FindTurn(tokenizer, turns, index, tools, (hasDetail || hasReasoningDetail) && hasReasoning ? Span.ContentOnly : Span.Whole);
            if (shouldTrain && start != -1 && end != -1)
            {
                if (hasDetail)
                    TrainDetail(tokenizer, ids, labels, start, Text(turn.Message["content"], "train_detail", "content", row), turn.Detail!, row);
                else if (!hasReasoningDetail)
                    for (int i = start; i < end; i++) labels[i] = ids[i];
            }
            if (shouldTrain && hasReasoningDetail && hasReasoning)
            {
                var reasoning = Text(turn.Message[thinkingKey], "the reasoning's training detail", thinkingKey, row);
                var (rs, re) = FindTurn(tokenizer, turns, index, tools, Span.ReasoningOnly);
                if (rs != -1 && re != -1) TrainDetail(tokenizer, ids, labels, rs, reasoning, turn.ReasoningDetail!, row);
            }
            foreach (var (isEot, option) in new[] { (true, trainOnEot), (false, trainOnEos) })
            {
                bool Matches(int i) => isEot ? eotIds.Contains(ids[i]) : ids[i] == eos;
                int found = -1;
                if (end >= 0)
                {
                    for (int i = end; i < ids.Length; i++) if (Matches(i)) { found = i; break; }
                    if (found == -1 || found - end > 3) continue;
                }
                else
                {
                    // A turn Axolotl could not find searches from index -1 (Python's last token), then from the start.
                    if (ids.Length > 0 && Matches(ids.Length - 1)) found = ids.Length - 1;
                    else for (int i = 0; i < Math.Min(3, ids.Length); i++) if (Matches(i)) { found = i; break; }
                    if (found == -1) continue;
                }
                if (isEot) lastEot = found; else lastEos = found;
                if (option == TrainOnEnd.All || (option == TrainOnEnd.Turn && shouldTrain)) labels[found] = ids[found];
            }
        }
        if (trainOnEot == TrainOnEnd.Last && lastEot != -1) labels[lastEot] = ids[lastEot];
        if (trainOnEos == TrainOnEnd.Last && lastEos != -1) labels[lastEos] = ids[lastEos];
        yield return new Example(ids, labels);
    }

    static string Text(JsonNode? node, string what, string field, Row row) =>
        node is JsonValue v && v.TryGetValue<string>(out var s) ? s
            : throw new BadRowError("wrong type", $"{row.Where}: {what} needs the message's '{field}' to be a string.");

    void TrainDetail(Tokenizer tokenizer, int[] ids, int[] labels, int start, string text, JsonNode detail, Row row)
    {
        var trained = TrainDetailMask(tokenizer, text, detail as JsonArray
            ?? throw new BadRowError("wrong type", $"{row.Where}: a training detail must be a list of {{begin_offset, end_offset, train}}."), row);
        for (int i = 0; i < trained.Length; i++)
            if (trained[i] && start + i < ids.Length) labels[start + i] = ids[start + i];
    }

    /// <summary>
    /// Axolotl's EOT tokens (eot_tokens, else the EOS token) as ids, checked as Axolotl checks them against the template:
    /// a configured token the template never writes is dropped with a warning; one the tokenizer splits into several
    /// tokens, or EOS counted as EOT while train_on_eos and train_on_eot disagree, is an error.
    /// </summary>
    HashSet<int> EotIds(Tokenizer tokenizer, string? source)
    {
        var eos = tokenizer.EosToken;
        var tokens = c.EotTokens?.ToList() ?? (eos is null ? [] : [eos]);
        // A template without source text (a hand-written IChatTemplate) cannot be checked, as Axolotl skips without one.
        if (source is null) { }
        else if (tokens is [var only] && only == eos)
        {
            // Axolotl accepts the template naming the variable as well as the token itself.
            if (!source.Contains(eos, StringComparison.Ordinal) && !source.Contains("eos_token", StringComparison.Ordinal))
                c.Warn?.Invoke($"the EOS token '{eos}' is not in the chat template, so no turn terminator is trained; set eot_tokens to the template's turn-ending token.");
        }
        else
        {
            foreach (var missing in tokens.Where(t => !source.Contains(t, StringComparison.Ordinal)))
                c.Warn?.Invoke($"eot_tokens: '{missing}' is not in the chat template; it is not used as an end-of-turn token.");
            tokens.RemoveAll(t => !source.Contains(t, StringComparison.Ordinal));
            foreach (var token in tokens)
            {
                var encoded = tokenizer.Encode(token, addSpecialTokens: false);
                if (encoded.Count == 0)
                    throw new UserError($"eot_tokens: '{token}' encodes to no tokens; list tokens the tokenizer can encode.");
                if (encoded.Count > 1)
                    throw new UserError($"eot_tokens: '{token}' is encoded as {encoded.Count} tokens ({string.Join(", ", encoded)}); add it under 'tokens:' in the config, or override an unused added token with added_tokens_overrides.");
            }
            if (eos != null && tokens.Contains(eos) && trainOnEos != trainOnEot)
                throw new UserError($"eot_tokens includes the EOS token '{eos}', but train_on_eos ({ConfigLoader.Spelling(trainOnEos)}) and train_on_eot ({ConfigLoader.Spelling(trainOnEot)}) differ; set them the same, or leave EOS out of eot_tokens.");
        }
        var set = new HashSet<int>();
        foreach (var token in tokens)
            if (tokenizer.Encode(token, addSpecialTokens: false) is [var single]) set.Add(single);
        return set;
    }

    int[] Encode(Tokenizer tokenizer, IEnumerable<Turn> turns, JsonArray? tools, int? realLastIndex = null) =>
        Encode(tokenizer, turns.Select(t => t.Message), tools, realLastIndex);

    int[] Encode(Tokenizer tokenizer, IEnumerable<JsonObject> turns, JsonArray? tools, int? realLastIndex)
    {
        var messages = new JsonArray(turns.Select(t => (JsonNode)t.DeepClone()).ToArray());
        var extra = realLastIndex is int n ? new JsonObject { ["real_last_index"] = n } : null;
        var text = template.Render(messages, addGenerationPrompt: false, tools?.DeepClone().AsArray(), extra);
        return tokenizer.Encode(text, addSpecialTokens: false).ToArray();
    }

    /// <summary>
    /// Axolotl's find_turn: the token span where the turn's real message and a dummy differ. The dummy replaces the
    /// content and drops the reasoning (Whole), replaces the content and keeps the reasoning (ContentOnly), or keeps
    /// the content and replaces the reasoning (ReasoningOnly).
    /// </summary>
    (int Start, int End) FindTurn(Tokenizer tokenizer, List<Turn> turns, int index, JsonArray? tools, Span span)
    {
        var real = turns[index].Message;
        var dummyTurn = new JsonObject { ["role"] = real["role"]?.DeepClone() };
        if (span == Span.ReasoningOnly)
        {
            dummyTurn["content"] = real["content"]?.DeepClone() ?? "";
            if (real.ContainsKey(thinkingKey)) dummyTurn[thinkingKey] = DummyReasoning;
        }
        else
        {
            dummyTurn["content"] = Dummy;
            if (span == Span.ContentOnly && real[thinkingKey] is { } reasoning) dummyTurn[thinkingKey] = reasoning.DeepClone();
        }
        var withDummy = turns.Take(index).Select(t => t.Message).Append(dummyTurn);
        var withContent = turns.Take(index + 1).Select(t => t.Message);
        int last = turns.Count - 1;
        var dummyIds = Encode(tokenizer, withDummy, tools, last);
        var fullIds = Encode(tokenizer, withContent, tools, last);
        if (dummyIds.Length == 0 || fullIds.Length == 0) return (-1, -1);
        int min = Math.Min(dummyIds.Length, fullIds.Length);
        int start = -1;
        for (int i = 0; i < min; i++) if (dummyIds[i] != fullIds[i]) { start = i; break; }
        if (start == -1) return (-1, -1);
        int end = -1;
        for (int i = 0; i < min; i++)
            if (dummyIds[dummyIds.Length - 1 - i] != fullIds[fullIds.Length - 1 - i]) { end = fullIds.Length - i; break; }
        if (end == -1 || end <= start) return (-1, -1);
        return (start, end);
    }

    /// <summary>
    /// Which of the content's tokens train_detail trains (Axolotl's get_offsets_for_train_detail): each token spans from
    /// its start to just before the next token's start; a token is trained only when it lies wholly inside a trained
    /// range (ranges are first widened to token boundaries). Token starts come from decoding growing prefixes; offsets
    /// count code points, as Python's do.
    /// </summary>
    static bool[] TrainDetailMask(Tokenizer tokenizer, string content, JsonArray detail, Row row)
    {
        var ids = tokenizer.Encode(content, addSpecialTokens: false);
        var codePointAt = new int[content.Length + 1];
        for (int u = 0, cp = 0; u <= content.Length; u++)
        {
            codePointAt[u] = cp;
            if (u < content.Length && !char.IsHighSurrogate(content[u])) cp++;
        }
        int length = codePointAt[content.Length];
        var starts = new int[ids.Count];
        for (int i = 1; i < ids.Count; i++) starts[i] = codePointAt[Math.Min(tokenizer.Decode(ids.Take(i)).Length, content.Length)];
        var spans = new (int Start, int End)[ids.Count];
        for (int i = 0; i < ids.Count; i++) spans[i] = (starts[i], i + 1 < ids.Count ? starts[i + 1] - 1 : length - 1);
        var ranges = new List<(int Begin, int End, bool Train)>();
        foreach (var item in detail)
        {
            if (item is not JsonObject o || o["begin_offset"] is not JsonValue b || o["end_offset"] is not JsonValue e
                || !b.TryGetValue<int>(out var begin) || !e.TryGetValue<int>(out var endOffset))
                throw new BadRowError("wrong type", $"{row.Where}: each train_detail entry needs integer begin_offset and end_offset, and train.");
            int first = Array.FindIndex(spans, s => s.Start >= begin);
            if (first == -1) first = spans.Length;
            if (first > 0 && spans[first - 1].End > begin) first--;
            int lastToken = Array.FindLastIndex(spans, s => s.End <= endOffset);
            if (lastToken < spans.Length - 1 && spans[lastToken + 1].Start < endOffset) lastToken++;
            if (first <= lastToken && lastToken >= 0) ranges.Add((spans[first].Start, spans[lastToken].End, Truthy(o["train"])));
        }
        var mask = new bool[ids.Count];
        for (int i = 0; i < ids.Count; i++)
            foreach (var r in ranges)
                if (spans[i].Start >= r.Begin && spans[i].End <= r.End && r.Train) mask[i] = true;
        return mask;
    }

    /// <summary>Python's truth value of a JSON value: null, false, 0, "" and empty lists and objects are false.</summary>
    static bool Truthy(JsonNode? node) => node switch
    {
        null => false,
        JsonArray a => a.Count > 0,
        JsonObject o => o.Count > 0,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>().Length > 0,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number => double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture) != 0,
        JsonValue v => v.GetValueKind() == JsonValueKind.True,
    };

    /// <summary>
    /// Axolotl's get_conversation_thread: map fields and roles, add the row's system field, take the training flags,
    /// join list content (and list reasoning) into text, drop the system turn.
    /// </summary>
    List<Turn> Turns(Row row)
    {
        var node = row.Fields[fieldMessages];
        if (node is JsonValue v && v.TryGetValue<string>(out var encoded))
        {
            try { node = JsonNode.Parse(encoded); }
            catch (JsonException) { throw new BadRowError("wrong type", $"{row.Where}: '{fieldMessages}' is a string that is not a JSON list of messages."); }
        }
        if (node is null) throw new BadRowError("missing field", $"{row.Where}: missing field '{fieldMessages}' (set field_messages to the column holding the conversation).");
        if (node is not JsonArray messages) throw new BadRowError("wrong type", $"{row.Where}: '{fieldMessages}' must be a list of messages.");
        if (messages.Count == 0) throw new BadRowError("empty conversation", $"{row.Where}: '{fieldMessages}' is an empty conversation.");
        var turns = new List<Turn>();
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i] is not JsonObject message) throw new BadRowError("wrong type", $"{row.Where}: {fieldMessages}[{i}] is not an object.");
            var turn = Transform(message, row, i);
            if (i == 0 && (string?)turn["role"] != "system" && row.Fields[fieldSystem] is JsonNode system)
                turns.Add(new Turn(new JsonObject { ["role"] = "system", ["content"] = system.DeepClone() }));
            var training = fieldTraining != null ? message[fieldTraining]?.DeepClone() : null;
            var detail = fieldTrainingDetail != null ? message[fieldTrainingDetail]?.DeepClone() : null;
            JsonNode? reasoningDetail = null;
            if (JoinParts(turn["content"], row, i) is { } content)
            {
                turn["content"] = content.Text;
                detail = content.Detail ?? detail;
            }
            if (JoinParts(turn[thinkingKey], row, i) is { } reasoning)
            {
                turn[thinkingKey] = reasoning.Text;
                reasoningDetail = reasoning.Detail;
            }
            turns.Add(new Turn(turn, training, detail, reasoningDetail));
        }
        if (dropSystem && (string?)turns[0].Message["role"] == "system") turns.RemoveAt(0);
        if (turns.Count == 0) throw new BadRowError("empty conversation", $"{row.Where}: the conversation has only a system message, which drop_system_message removes.");
        return turns;
    }

    /// <summary>
    /// Axolotl's _convert_content_parts: OpenAI-style content parts joined into one text (each part's text, content or
    /// value; parts that are not objects count for nothing). Parts with train or weight set give the turn a
    /// training detail: one offset range per non-empty part, trained unless train is false or weight is 0.
    /// </summary>
    (string Text, JsonArray? Detail)? JoinParts(JsonNode? node, Row row, int index)
    {
        if (node is not JsonArray parts) return null;
        var text = new StringBuilder();
        var detail = new JsonArray();
        bool flagged = false;
        int offset = 0;
        foreach (var part in parts.OfType<JsonObject>())
        {
            var value = new[] { part["text"], part["content"], part["value"] }.FirstOrDefault(Truthy);
            var piece = value is null ? "" : value is JsonValue pv && pv.TryGetValue<string>(out var str) ? str
                : throw new BadRowError("wrong type", $"{row.Where}: {fieldMessages}[{index}] has a content part whose text is not a string.");
            bool train = true;
            if (part["train"] is { } t) { flagged = true; train = Truthy(t); }
            else if (part["weight"] is { } w) { flagged = true; train = w.GetValueKind() is not (JsonValueKind.False or JsonValueKind.Number) || Truthy(w); }
            if (piece.Length > 0)
            {
                // Offsets count code points, as Python's len does.
                int length = piece.Count(ch => !char.IsLowSurrogate(ch));
                detail.Add(new JsonObject { ["begin_offset"] = offset, ["end_offset"] = offset + length - 1, ["train"] = train });
                offset += length;
            }
            text.Append(piece);
        }
        return (text.ToString(), flagged ? detail : null);
    }

    JsonObject Transform(JsonObject message, Row row, int index)
    {
        var turn = new JsonObject();
        foreach (var (target, source) in mappings)
            if (message[source] is JsonNode value) turn[target] = value.DeepClone();
        if (turn["role"] is not JsonValue rv || !rv.TryGetValue<string>(out var role))
            throw new BadRowError("missing field", $"{row.Where}: {fieldMessages}[{index}] has no '{mappings["role"]}' (the role); set message_property_mappings.");
        role = roles.GetValueOrDefault(role, role);
        turn["role"] = role;
        if (splitThinking && role == "assistant") SplitThinking(turn, row, index);
        // Fields the mapping does not name pass through for the template to read (tool_calls, name, reasoning_content, ...),
        // over what the mapping or split_thinking set, as in Axolotl.
        var mapped = mappings.Values.ToHashSet();
        foreach (var (key, value) in message)
            if (!mapped.Contains(key) && key != fieldTraining && key != fieldTrainingDetail && value is not null)
                turn[key] = value.DeepClone();
        if (turn["role"] is not JsonValue fv || !fv.TryGetValue<string>(out role)
            || role is not ("system" or "user" or "assistant" or "tool" or "ipython" or "function" or "developer") && !roles.ContainsValue(role))
            throw new BadRowError("unknown role", $"{row.Where}: {fieldMessages}[{index}] has the unknown role '{turn["role"]}'; map it with 'roles' (e.g. roles: {{user: [{turn["role"]}]}}).");
        if (turn["tool_calls"] is JsonArray calls)
            foreach (var call in calls)
                if (call?["function"] is JsonObject f && f["arguments"] is JsonValue av && av.TryGetValue<string>(out var args))
                {
                    try { f["arguments"] = JsonNode.Parse(args); }
                    catch (JsonException) { throw new BadRowError("wrong type", $"{row.Where}: {fieldMessages}[{index}] has tool_call arguments that are not JSON."); }
                }
        return turn;
    }

    /// <summary>
    /// Axolotl's split_thinking: the text between the first reasoning tags (&lt;think&gt;, &lt;reasoning&gt; or
    /// &lt;|begin_of_thought|&gt;, the first pair whose both tags occur) becomes the thinking key, stripped; the rest, with
    /// leading whitespace stripped, stays the content, or only what &lt;|begin_of_solution|&gt; tags enclose, stripped.
    /// </summary>
    void SplitThinking(JsonObject turn, Row row, int index)
    {
        if (turn["content"] is null)
            throw new BadRowError("missing field", $"{row.Where}: {fieldMessages}[{index}] is an assistant message without content, which split_thinking needs.");
        if (turn["content"] is not JsonValue cv || !cv.TryGetValue<string>(out var content)) return;
        foreach (var (open, close) in ThinkingTags)
        {
            if (!content.Contains(open, StringComparison.Ordinal) || !content.Contains(close, StringComparison.Ordinal)) continue;
            int from = content.IndexOf(open, StringComparison.Ordinal) + open.Length, to = content.IndexOf(close, StringComparison.Ordinal);
            turn[thinkingKey] = PyStrip(to > from ? content[from..to] : "");
            var rest = PyStrip(content[(to + close.Length)..], end: false);
            turn["content"] = rest;
            foreach (var (sOpen, sClose) in SolutionTags)
                if (rest.Contains(sOpen, StringComparison.Ordinal) && rest.Contains(sClose, StringComparison.Ordinal))
                {
                    int sFrom = rest.IndexOf(sOpen, StringComparison.Ordinal) + sOpen.Length, sTo = rest.IndexOf(sClose, StringComparison.Ordinal);
                    turn["content"] = PyStrip(sTo > sFrom ? rest[sFrom..sTo] : "");
                    break;
                }
            return;
        }
    }

    /// <summary>Python's str.strip()/lstrip(): its whitespace includes the separators U+001C..U+001F, which .NET's does not.</summary>
    static string PyStrip(string s, bool end = true)
    {
        static bool Space(char ch) => char.IsWhiteSpace(ch) || ch is >= '\u001c' and <= '\u001f';
        int a = 0, b = s.Length;
        while (a < b && Space(s[a])) a++;
        while (end && b > a && Space(s[b - 1])) b--;
        return s[a..b];
    }

    JsonArray? Tools(Row row)
    {
        var node = row.Fields[fieldTools];
        if (node is null) return null;
        if (node is JsonValue v && v.TryGetValue<string>(out var s))
        {
            try { node = JsonNode.Parse(s); }
            catch (JsonException) { throw new BadRowError("wrong type", $"{row.Where}: '{fieldTools}' is a string that is not JSON."); }
        }
        if (node is not JsonArray tools) throw new BadRowError("wrong type", $"{row.Where}: '{fieldTools}' must be a list of tools.");
        foreach (var tool in tools)
            if (tool?["function"] is JsonObject f && f["parameters"] is JsonValue pv && pv.TryGetValue<string>(out var p))
            {
                try { f["parameters"] = JsonNode.Parse(p); }
                catch (JsonException) { throw new BadRowError("wrong type", $"{row.Where}: a tool's parameters are not JSON."); }
            }
        return tools;
    }
}
