using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Tokenization;

namespace Axolotl.Tests.Tokenization;

/// <summary>Fixture paths and tokenizers shared by the tokenizer tests (each loads once per test run).</summary>
static class TokFixtures
{
    public static string Data(params string[] parts) => Path.Combine([AppContext.BaseDirectory, "testdata", .. parts]);

    static readonly Lazy<Tokenizer> _llama2 = new(() => Tokenizer.FromFolder(Data("tok-llama2")));
    static readonly Lazy<Tokenizer> _gpt2 = new(() => Tokenizer.FromFolder(Data("tok-gpt2")));
    static readonly Lazy<Tokenizer> _tiny512 = new(() => Tokenizer.FromFolder(Data("tok-tiny512")));
    static readonly Lazy<Tokenizer> _phi3Mini = new(() => Tokenizer.FromFolder(Data("tok-phi3")));
    static readonly Lazy<Tokenizer> _phi3 = new(() => Tokenizer.FromFolder(Data("tok-phi3", "phi-3")));
    static readonly Lazy<string> _llama3Folder = new(BuildLlama3Folder);
    static readonly Lazy<Tokenizer> _llama3 = new(() => Tokenizer.FromFolder(Llama3Folder));
    static readonly Lazy<Tokenizer> _llama3Tiktoken = new(() => Tokenizer.FromFolder(Data("tok-llama3")));

    /// <summary>Llama-2: legacy SentencePiece-style tokenizer.json, special tokens with normalized=true.</summary>
    public static Tokenizer Llama2 => _llama2.Value;
    public static Tokenizer Gpt2 => _gpt2.Value;
    public static Tokenizer Tiny512 => _tiny512.Value;
    /// <summary>Phi-3-mini as published: Llama-2 vocabulary, chat tokens with rstrip=true, add_bos_token=false.</summary>
    public static Tokenizer Phi3Mini => _phi3Mini.Value;
    /// <summary>The onnxruntime-extensions phi-3 variant: rstrip=false everywhere, add_bos_token=true.</summary>
    public static Tokenizer Phi3 => _phi3.Value;
    /// <summary>Llama-3 from the tokenizer.json that <see cref="Llama3TokenizerJson"/> rebuilds.</summary>
    public static Tokenizer Llama3 => _llama3.Value;
    /// <summary>Llama-3 from Meta's tiktoken tokenizer.model, converted as transformers' TikTokenConverter does.</summary>
    public static Tokenizer Llama3Tiktoken => _llama3Tiktoken.Value;
    public static string Llama3Folder => _llama3Folder.Value;

    /// <summary>
    /// Llama-3's tokenizer.json (~9 MB, not shipped): tok-llama3/tokenizer.skeleton.json (every part but the BPE model,
    /// written after Llama-3.2's published file) with the vocabulary of encoder.json and the merges of vocab.bpe.
    /// </summary>
    public static string Llama3TokenizerJson()
    {
        var skeleton = File.ReadAllText(Data("tok-llama3", "tokenizer.skeleton.json"));
        var merges = File.ReadLines(Data("tok-llama3", "vocab.bpe")).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal));
        var json = new StringBuilder(12_000_000);
        const string vocabSlot = "\"vocab\": {}", mergesSlot = "\"merges\": []";
        int v = skeleton.IndexOf(vocabSlot, StringComparison.Ordinal), m = skeleton.IndexOf(mergesSlot, StringComparison.Ordinal);
        if (v < 0 || m < v) throw new InvalidOperationException("tokenizer.skeleton.json lacks the empty vocab/merges slots");
        json.Append(skeleton, 0, v).Append("\"vocab\": ").Append(File.ReadAllText(Data("tok-llama3", "encoder.json")));
        json.Append(skeleton, v + vocabSlot.Length, m - v - vocabSlot.Length).Append("\"merges\": [");
        bool first = true;
        foreach (var merge in merges)
        {
            if (!first) json.Append(',');
            json.Append(JsonValue.Create(merge)!.ToJsonString());
            first = false;
        }
        json.Append(']').Append(skeleton, m + mergesSlot.Length, skeleton.Length - m - mergesSlot.Length);
        return json.ToString();
    }

    static string BuildLlama3Folder()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"axolotl-llama3-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), Llama3TokenizerJson());
        File.Copy(Data("tok-llama3", "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"), overwrite: true);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        return dir;
    }
}
