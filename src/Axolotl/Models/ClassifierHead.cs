using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>Which transformers head sits on the decoder in place of lm_head.</summary>
internal enum ClassifierKind
{
    /// <summary>*ForSequenceClassification: one score per row, read at the row's last non-padding token (reward models).</summary>
    Sequence,
    /// <summary>*ForTokenClassification: scores at every token (process reward models).</summary>
    Token,
}

/// <summary>
/// A classifier head named <c>score</c> (Linear hidden → num_labels) instead of the language-model head, as
/// transformers' Generic*Classification classes build it: without a bias for sequence classification, with one for
/// token classification; a checkpoint without it starts from normal(0, initializer_range) and a zero bias.
/// </summary>
internal sealed record ClassifierHead(ClassifierKind Kind, int NumLabels)
{
    public const string Module = "score";

    public bool Bias => Kind == ClassifierKind.Token;

    /// <summary>transformers' class for a family (LlamaForSequenceClassification, Qwen2ForTokenClassification, ...).</summary>
    public static string ArchitectureName(string modelType, ClassifierKind kind) =>
        modelType switch
        {
            "qwen2_moe" => "Qwen2Moe",
            "qwen3_moe" => "Qwen3Moe",
            "gemma3_text" => "Gemma3Text",
            _ => string.Concat(modelType.Split('_').Select(p => p.Length == 0 ? p : char.ToUpperInvariant(p[0]) + p[1..])),
        } + (kind == ClassifierKind.Sequence ? "ForSequenceClassification" : "ForTokenClassification");

    /// <summary>
    /// The architecture with this head: config.json as transformers saves such a model (architectures, id2label and
    /// label2id with LABEL_i names, pad_token_id when given, which sequence classification needs to find each row's end).
    /// </summary>
    public static DecoderConfig Attach(DecoderConfig config, ClassifierKind kind, int numLabels, int? padTokenId = null)
    {
        var raw = (JsonObject)config.Raw.DeepClone();
        raw["architectures"] = new JsonArray(JsonValue.Create(ArchitectureName(config.ModelType, kind)));
        var id2label = new JsonObject();
        var label2id = new JsonObject();
        for (int i = 0; i < numLabels; i++)
        {
            id2label[i.ToString(System.Globalization.CultureInfo.InvariantCulture)] = $"LABEL_{i}";
            label2id[$"LABEL_{i}"] = i;
        }
        raw["id2label"] = id2label;
        raw["label2id"] = label2id;
        if (padTokenId is int pad) raw["pad_token_id"] = pad;
        return config with { Classifier = new ClassifierHead(kind, numLabels), Raw = raw };
    }

    /// <summary>
    /// transformers' rule for the token a sequence classifier reads: the rightmost token that is not pad_token_id
    /// (so right or left padding both work, and a trailing EOS equal to the pad token is skipped); row 0's position when
    /// a row is all padding. ids [rows, seq] → positions [rows] (int64).
    /// </summary>
    public static Tensor LastNonPadPositions(Tensor ids, long padTokenId)
    {
        var notPad = ids.ne(padTokenId).to(ScalarType.Int32);
        var positions = arange(ids.shape[^1], dtype: ScalarType.Int32, device: ids.device);
        return (positions * notPad).argmax(-1);
    }
}
