using System.Text.Json.Nodes;

namespace Axolotl.Tests.Trackers;

/// <summary>A tiny alpaca run on the 512-token reference Llama: 12 rows, 4 held out, a few steps.</summary>
static class TrackerData
{
    public static string WriteAlpaca(TempDir dir)
    {
        var words = "the a cat dog runs sat on mat red blue green quick slow jumps over lazy fox bird sings tree".Split(' ');
        var rng = new Random(11);
        string Text(int n) => string.Join(' ', Enumerable.Range(0, n).Select(_ => words[rng.Next(words.Length)]));
        File.WriteAllLines(dir["alpaca.jsonl"], Enumerable.Range(0, 12).Select(i => new JsonObject
        {
            ["instruction"] = Text(3 + i % 4), ["input"] = "", ["output"] = Text(3 + i % 6),
        }.ToJsonString()));
        return dir["alpaca.jsonl"];
    }

    public static string Yaml(TempDir dir, string extra) => $"""
        base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
        tokenizer_config: {TestSetup.Data("tok-tiny512")}
        datasets:
          - path: {WriteAlpaca(dir)}
            type: alpaca
        sequence_len: 256
        val_set_size: 4
        micro_batch_size: 2
        max_steps: 4
        eval_steps: 2
        learning_rate: 0.01
        warmup_steps: 0
        logging_steps: 1
        bf16: false
        save_steps: 2
        output_dir: {dir["out"]}
        {extra}
        """;

    public static JsonArray History(TempDir dir) =>
        JsonNode.Parse(File.ReadAllText(dir["out/trainer_state.json"]))!["log_history"]!.AsArray();
}
