using System.Text.Json.Nodes;

namespace Axolotl.Models;

/// <summary>
/// The architecture read from a Hugging Face config.json. Family differences are data here, so the decoder is one
/// piece of code: a family that needs a new behaviour adds a field, not a class.
/// </summary>
public sealed record DecoderConfig
{
    public required string ModelType { get; init; }
    public required int VocabSize { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumLayers { get; init; }
    public required int NumHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000;
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Bias on q/k/v projections (Qwen2; Llama's attention_bias covers o_proj too).</summary>
    public bool QkvBias { get; init; }
    public bool OutputBias { get; init; }
    public bool MlpBias { get; init; }
    public double InitializerRange { get; init; } = 0.02;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    /// <summary>The config.json as read, so saving a model writes back what came in (with our changes applied).</summary>
    public JsonObject Raw { get; init; } = new();

    static readonly string[] Supported = ["llama", "qwen2"];

    public static DecoderConfig FromFolder(string modelDir)
    {
        var path = Path.Combine(modelDir, "config.json");
        if (!Directory.Exists(modelDir)) throw new UserError($"base_model: folder '{modelDir}' does not exist.");
        if (!File.Exists(path)) throw new UserError($"{modelDir}: no config.json; base_model must be a Hugging Face model folder.");
        return FromJson(IO.JsonFiles.ReadObject(path), path);
    }

    public static DecoderConfig FromJson(JsonObject json, string source)
    {
        string modelType = json["model_type"]?.GetValue<string>() ?? throw new UserError($"{source}: no model_type.");
        if (!Supported.Contains(modelType))
            throw new UserError($"{source}: model_type '{modelType}' is not supported yet (supported: {string.Join(", ", Supported)}).");
        int Req(string key) => json[key]?.GetValue<int>() ?? throw new UserError($"{source}: missing '{key}'.");
        int heads = Req("num_attention_heads");
        int hidden = Req("hidden_size");
        bool attentionBias = json["attention_bias"]?.GetValue<bool>() ?? false;
        var act = json["hidden_act"]?.GetValue<string>() ?? "silu";
        if (act != "silu") throw new UserError($"{source}: hidden_act '{act}' is not supported yet (silu is).");
        if (json["rope_scaling"] is JsonObject)
            throw new UserError($"{source}: rope_scaling is not supported yet; only plain RoPE is.");
        try
        {
            return new DecoderConfig
            {
                ModelType = modelType,
                VocabSize = Req("vocab_size"),
                HiddenSize = hidden,
                IntermediateSize = Req("intermediate_size"),
                NumLayers = Req("num_hidden_layers"),
                NumHeads = heads,
                NumKeyValueHeads = json["num_key_value_heads"]?.GetValue<int>() ?? heads,
                HeadDim = json["head_dim"]?.GetValue<int>() ?? hidden / heads,
                RmsNormEps = json["rms_norm_eps"]?.GetValue<double>() ?? 1e-6,
                RopeTheta = json["rope_theta"]?.GetValue<double>() ?? 10000,
                TieWordEmbeddings = json["tie_word_embeddings"]?.GetValue<bool>() ?? false,
                QkvBias = modelType == "qwen2" || attentionBias,
                OutputBias = attentionBias,
                MlpBias = json["mlp_bias"]?.GetValue<bool>() ?? false,
                InitializerRange = json["initializer_range"]?.GetValue<double>() ?? 0.02,
                MaxPositionEmbeddings = json["max_position_embeddings"]?.GetValue<int>() ?? 2048,
                BosTokenId = TokenId(json["bos_token_id"]),
                EosTokenId = TokenId(json["eos_token_id"]),
                Raw = json,
            };
        }
        catch (InvalidOperationException e) { throw new UserError($"{source}: a value has the wrong type ({e.Message})."); }
        catch (FormatException e) { throw new UserError($"{source}: a value has the wrong type ({e.Message})."); }
    }

    static int? TokenId(JsonNode? node) => node switch
    {
        null => null,
        JsonArray a when a.Count > 0 => a[0]!.GetValue<int>(),
        JsonValue v => v.GetValue<int>(),
        _ => null,
    };
}
