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
public sealed class ChatTemplateStrategy : IPromptStrategy
{
    const string Dummy = "[[dummy_message]]";
    readonly StrategyContext c;
    readonly IChatTemplate template;
    readonly string fieldMessages, fieldSystem, fieldTools;
    readonly string? fieldTraining, fieldTrainingDetail;
    readonly Dictionary<string, string> mappings;
    readonly Dictionary<string, string> roles;
    readonly HashSet<string> rolesToTrain;
    readonly string trainOnEos, trainOnEot;
    readonly bool dropSystem;

    public ChatTemplateStrategy(StrategyContext context, DatasetConfig d, IChatTemplate template)
    {
        c = context;
        this.template = template;
        fieldMessages = d.FieldMessages ?? "messages";
        fieldSystem = d.FieldSystem ?? "system";
        fieldTools = d.FieldTools ?? "tools";
        fieldTraining = d.MessageFieldTraining;
        fieldTrainingDetail = d.MessageFieldTrainingDetail;
        mappings = d.MessagePropertyMappings is { Count: > 0 } m ? new(m) : new() { ["role"] = "role", ["content"] = "content" };
        // The deprecated message_field_role/content are the same mapping under older names.
        if (d.MessageFieldRole is { } r) mappings["role"] = r;
        if (d.MessageFieldContent is { } ct) mappings["content"] = ct;
        roles = d.Roles is { Count: > 0 } given
            ? given.SelectMany(kv => kv.Value.Select(source => (source, target: kv.Key))).ToDictionary(x => x.source, x => x.target)
            : new() { ["human"] = "user", ["user"] = "user", ["assistant"] = "assistant", ["gpt"] = "assistant", ["system"] = "system", ["tool"] = "tool" };
        rolesToTrain = (d.RolesToTrain ?? ["assistant"]).Select(x => roles.GetValueOrDefault(x, x)).ToHashSet();
        trainOnEos = d.TrainOnEos ?? "turn";
        trainOnEot = d.TrainOnEot ?? trainOnEos;
        dropSystem = d.DropSystemMessage;
    }

    public IEnumerable<Example> Tokenize(Row row)
    {
        var tokenizer = c.Tokenizer();
        var turns = Turns(row);
        var tools = Tools(row);
        var ids = Encode(tokenizer, turns, tools);
        var labels = new int[ids.Length];
        Array.Fill(labels, Example.IgnoreIndex);
        var eotIds = EotIds(tokenizer);
        int? eos = tokenizer.EosTokenId;
        int lastEos = -1, lastEot = -1;
        for (int index = 0; index < turns.Count; index++)
        {
            var turn = turns[index];
            var role = (string?)turn["role"];
            bool? trainTurn = turn["training"] is JsonValue tv && tv.TryGetValue<bool>(out var t) ? t : null;
            var detail = turn["training_detail"] as JsonArray;
            bool shouldTrain = trainTurn ?? (detail != null ? detail.Count > 0 : c.TrainOnInputs || (role != null && rolesToTrain.Contains(role)));
            if (!shouldTrain && trainOnEos != "all" && trainOnEot != "all") continue;

            var (start, end) = FindTurn(tokenizer, turns, index, tools);
            if (shouldTrain && start != -1 && end != -1)
            {
                if (detail != null && detail.Count > 0)
                {
                    var content = turn["content"] is JsonValue cv && cv.TryGetValue<string>(out var s) ? s
                        : throw new BadRowError("wrong type", $"{row.Where}: train_detail needs the message content to be a string.");
                    var trained = TrainDetailMask(tokenizer, content, detail, row);
                    for (int i = 0; i < trained.Length; i++)
                        if (trained[i] && start + i < ids.Length) labels[start + i] = ids[start + i];
                }
                else
                    for (int i = start; i < end; i++) labels[i] = ids[i];
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
                if (option == "all" || (option == "turn" && shouldTrain)) labels[found] = ids[found];
            }
        }
        if (trainOnEot == "last" && lastEot != -1) labels[lastEot] = ids[lastEot];
        if (trainOnEos == "last" && lastEos != -1) labels[lastEos] = ids[lastEos];
        yield return new Example(ids, labels);
    }

    HashSet<int> EotIds(Tokenizer tokenizer)
    {
        var set = new HashSet<int>();
        foreach (var token in c.EotTokens ?? (tokenizer.EosToken is { } e ? [e] : []))
            if (tokenizer.Encode(token, addSpecialTokens: false) is [var single]) set.Add(single);
        return set;
    }

    int[] Encode(Tokenizer tokenizer, List<JsonObject> turns, JsonArray? tools, int? realLastIndex = null)
    {
        var messages = new JsonArray(turns.Select(t => (JsonNode)t.DeepClone()).ToArray());
        var extra = realLastIndex is int n ? new JsonObject { ["real_last_index"] = n } : null;
        var text = template.Render(messages, addGenerationPrompt: false, tools?.DeepClone().AsArray(), extra);
        return tokenizer.Encode(text, addSpecialTokens: false).ToArray();
    }

    /// <summary>Axolotl's find_turn: the token span where the turn's real content and a dummy content differ.</summary>
    (int Start, int End) FindTurn(Tokenizer tokenizer, List<JsonObject> turns, int index, JsonArray? tools)
    {
        var dummyTurn = new JsonObject { ["role"] = turns[index]["role"]?.DeepClone(), ["content"] = Dummy };
        var withDummy = turns.Take(index).Append(dummyTurn).ToList();
        var withContent = turns.Take(index + 1).ToList();
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
    /// range (ranges are first widened to token boundaries). Token starts come from decoding growing prefixes.
    /// </summary>
    static bool[] TrainDetailMask(Tokenizer tokenizer, string content, JsonArray detail, Row row)
    {
        var ids = tokenizer.Encode(content, addSpecialTokens: false);
        var starts = new int[ids.Count];
        for (int i = 1; i < ids.Count; i++) starts[i] = Math.Min(tokenizer.Decode(ids.Take(i)).Length, content.Length);
        var spans = new (int Start, int End)[ids.Count];
        for (int i = 0; i < ids.Count; i++) spans[i] = (starts[i], i + 1 < ids.Count ? starts[i + 1] - 1 : content.Length - 1);
        var ranges = new List<(int Begin, int End, bool Train)>();
        foreach (var item in detail)
        {
            if (item is not JsonObject o || o["begin_offset"] is not JsonValue b || o["end_offset"] is not JsonValue e || o["train"] is not JsonValue t
                || !b.TryGetValue<int>(out var begin) || !e.TryGetValue<int>(out var endOffset) || !t.TryGetValue<bool>(out var train))
                throw new BadRowError("wrong type", $"{row.Where}: each train_detail entry needs integer begin_offset, end_offset and boolean train.");
            int first = Array.FindIndex(spans, s => s.Start >= begin);
            if (first == -1) first = spans.Length;
            if (first > 0 && spans[first - 1].End > begin) first--;
            int lastToken = Array.FindLastIndex(spans, s => s.End <= endOffset);
            if (lastToken < spans.Length - 1 && spans[lastToken + 1].Start < endOffset) lastToken++;
            if (first <= lastToken && lastToken >= 0) ranges.Add((spans[first].Start, spans[lastToken].End, train));
        }
        var mask = new bool[ids.Count];
        for (int i = 0; i < ids.Count; i++)
            foreach (var r in ranges)
                if (spans[i].Start >= r.Begin && spans[i].End <= r.End && r.Train) mask[i] = true;
        return mask;
    }

    /// <summary>Axolotl's get_conversation_thread: map fields and roles, add the row's system field, drop the system turn.</summary>
    List<JsonObject> Turns(Row row)
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
        var turns = new List<JsonObject>();
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i] is not JsonObject message) throw new BadRowError("wrong type", $"{row.Where}: {fieldMessages}[{i}] is not an object.");
            var turn = Transform(message, row, i);
            if (i == 0 && (string?)turn["role"] != "system" && row.Fields[fieldSystem] is JsonNode system)
                turns.Add(new JsonObject { ["role"] = "system", ["content"] = system.DeepClone() });
            if (fieldTraining != null && message[fieldTraining] is JsonNode training) turn["training"] = training.DeepClone();
            if (fieldTrainingDetail != null && message[fieldTrainingDetail] is JsonNode trainingDetail) turn["training_detail"] = trainingDetail.DeepClone();
            turns.Add(turn);
        }
        if (dropSystem && (string?)turns[0]["role"] == "system") turns.RemoveAt(0);
        if (turns.Count == 0) throw new BadRowError("empty conversation", $"{row.Where}: the conversation has only a system message, which drop_system_message removes.");
        return turns;
    }

    JsonObject Transform(JsonObject message, Row row, int index)
    {
        var turn = new JsonObject();
        foreach (var (target, source) in mappings)
            if (message[source] is JsonNode value) turn[target] = value.DeepClone();
        if (turn["role"] is not JsonValue rv || !rv.TryGetValue<string>(out var role))
            throw new BadRowError("missing field", $"{row.Where}: {fieldMessages}[{index}] has no '{mappings["role"]}' (the role); set message_property_mappings.");
        role = roles.GetValueOrDefault(role, role);
        if (role is not ("system" or "user" or "assistant" or "tool" or "ipython" or "function" or "developer") && !roles.ContainsValue(role))
            throw new BadRowError("unknown role", $"{row.Where}: {fieldMessages}[{index}] has the unknown role '{role}'; map it with 'roles' (e.g. roles: {{user: [{role}]}}).");
        turn["role"] = role;
        // Fields the mapping does not name pass through for the template to read (tool_calls, name, ...).
        var mapped = mappings.Values.ToHashSet();
        foreach (var (key, value) in message)
            if (!mapped.Contains(key) && key != fieldTraining && key != fieldTrainingDetail && value is not null && !turn.ContainsKey(key))
                turn[key] = value.DeepClone();
        if (turn["tool_calls"] is JsonArray calls)
            foreach (var call in calls)
                if (call?["function"] is JsonObject f && f["arguments"] is JsonValue av && av.TryGetValue<string>(out var args))
                {
                    try { f["arguments"] = JsonNode.Parse(args); }
                    catch (JsonException) { throw new BadRowError("wrong type", $"{row.Where}: {fieldMessages}[{index}] has tool_call arguments that are not JSON."); }
                }
        return turn;
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
