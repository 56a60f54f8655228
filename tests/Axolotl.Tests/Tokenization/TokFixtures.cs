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

    /// <summary>Llama-2: legacy SentencePiece-style tokenizer.json, special tokens with normalized=true.</summary>
    public static Tokenizer Llama2 => _llama2.Value;
    public static Tokenizer Gpt2 => _gpt2.Value;
    public static Tokenizer Tiny512 => _tiny512.Value;
    /// <summary>Phi-3-mini as published: Llama-2 vocabulary, chat tokens with rstrip=true, add_bos_token=false.</summary>
    public static Tokenizer Phi3Mini => _phi3Mini.Value;
    /// <summary>The onnxruntime-extensions phi-3 variant: rstrip=false everywhere, add_bos_token=true.</summary>
    public static Tokenizer Phi3 => _phi3.Value;
}
