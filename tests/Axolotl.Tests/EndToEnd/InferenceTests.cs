using Axolotl.Adapters;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Tests.EndToEnd;

/// <summary>Tests that swap Console.In/Out: nothing else may print while they run.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConsoleCapture
{
    public const string Name = "console capture";
}

/// <summary>`axolotl inference`: the streamed text is the greedy decode of the dataset-formatted prompt.</summary>
[Collection(ConsoleCapture.Name)]
public class InferenceTests
{
    static readonly string BaseModel = TestSetup.Data("reference", "models", "tiny-llama");
    static readonly string TokenizerDir = TestSetup.Data("tok-tiny512");
    static readonly string Adapter = TestSetup.Data("reference", "adapters", "tiny-llama-lora-step20");

    static string Config(TempDir dir, string extra = "")
    {
        File.WriteAllText(dir["alpaca.json"], """[{"instruction": "Say hi.", "input": "", "output": "hi"}]""");
        File.WriteAllText(dir["config.yml"], $"""
            base_model: {BaseModel}
            tokenizer_config: {TokenizerDir}
            bf16: false
            datasets:
              - path: {dir["alpaca.json"]}
                type: alpaca
            learning_rate: 0.001
            output_dir: {dir["out"]}
            {extra}
            """);
        return dir["config.yml"];
    }

    /// <summary>
    /// The expected answer, apart from the library's generation code: Axolotl's alpaca prompt written out (prompters.py,
    /// AlpacaPrompter, no input), tokenized with the tokenizer's special tokens, then greedy decoding by full forward
    /// passes over the whole sequence (no KV cache) with transformers' repetition penalty (a seen token's logit divided
    /// by 1.1 when positive, multiplied when negative), stopping at an EOS id of generation_config.json or the tokenizer.
    /// </summary>
    static string Expected(string instruction, int maxNewTokens, string? adapter = null)
    {
        var prompt = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
                     $"### Instruction:\n{instruction}\n\n### Response:\n";
        return GreedyByHand(Tokenizer.FromFolder(TokenizerDir).Encode(prompt), maxNewTokens, adapter);
    }

    static string GreedyByHand(IEnumerable<int> promptIds, int maxNewTokens, string? adapter = null)
    {
        using var scope = NewDisposeScope();
        var model = CausalLM.FromPretrained(BaseModel, ScalarType.Float32, ScalarType.Float32);
        if (adapter != null) Lora.Load(model, adapter);
        model.eval();
        var tokenizer = Tokenizer.FromFolder(TokenizerDir);
        var ids = promptIds.Select(i => (long)i).ToList();
        var eos = new HashSet<long> { (long)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(BaseModel, "generation_config.json")))!["eos_token_id"]!, tokenizer.EosTokenId!.Value };
        var generated = new List<int>();
        using var _ = no_grad();
        for (int n = 0; n < maxNewTokens; n++)
        {
            var logits = model.forward(tensor(ids.ToArray()).unsqueeze(0))[0, -1].data<float>().ToArray();
            foreach (var seen in ids.Distinct()) logits[seen] = logits[seen] > 0 ? logits[seen] / 1.1f : logits[seen] * 1.1f;
            int next = Array.IndexOf(logits, logits.Max());
            generated.Add(next);
            ids.Add(next);
            if (eos.Contains(next)) break;
        }
        return tokenizer.Decode(generated, skipSpecialTokens: true);
    }

    static (int Code, string Out) Run(string stdin, params string[] args)
    {
        var (oldOut, oldIn) = (Console.Out, Console.In);
        var captured = new StringWriter();
        try
        {
            Console.SetOut(captured);
            Console.SetIn(new StringReader(stdin));
            return (Cli.Cli.Run(args), captured.ToString());
        }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetIn(oldIn);
        }
    }

    [Fact]
    public void Prompt_flag_streams_the_greedy_decode_of_the_alpaca_prompt()
    {
        using var dir = TestSetup.TempDir();
        var (code, output) = Run("", "inference", Config(dir), "--prompt", "Name a colour.", "--temperature", "0", "--max-new-tokens", "12");
        Assert.Equal(0, code);
        var expected = Expected("Name a colour.", 12);
        Assert.False(string.IsNullOrWhiteSpace(expected));
        Assert.Equal(expected + Environment.NewLine, output);
    }

    [Fact]
    public void Stdin_until_eof_is_one_prompt()
    {
        using var dir = TestSetup.TempDir();
        var (code, output) = Run("Name a colour.\n", "inference", Config(dir), "--temperature=0", "--max-new-tokens=12");
        Assert.Equal(0, code);
        Assert.Equal(Expected("Name a colour.", 12) + Environment.NewLine, output);
    }

    [Fact]
    public void The_lora_adapter_is_applied()
    {
        using var dir = TestSetup.TempDir();
        var config = Config(dir, "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true");
        var (code, output) = Run("", "inference", config, "--lora-model-dir", Adapter, "--prompt", "Name a colour.", "--temperature", "0", "--max-new-tokens", "12");
        Assert.Equal(0, code);
        var expected = Expected("Name a colour.", 12, Adapter);
        Assert.Equal(expected + Environment.NewLine, output);
        Assert.NotEqual(Expected("Name a colour.", 12), expected);
    }

    [Fact]
    public void Sampling_follows_the_config_seed()
    {
        using var dir = TestSetup.TempDir();
        var config = Config(dir);
        string[] args = ["inference", config, "--prompt", "Name a colour.", "--max-new-tokens", "10"];
        var first = Run("", [.. args, "--seed", "1"]);
        Assert.Equal(0, first.Code);
        Assert.Equal(first.Out, Run("", [.. args, "--seed", "1"]).Out);
        Assert.Contains(Enumerable.Range(2, 4), s => Run("", [.. args, "--seed", s.ToString()]).Out != first.Out);
    }

    [Fact]
    public void Chat_renders_the_instruction_as_a_user_turn_with_the_tokenizers_template()
    {
        using var dir = TestSetup.TempDir();
        var (code, output) = Run("", "inference", Config(dir), "--chat", "--prompt", "Name a colour.\n", "--temperature", "0", "--max-new-tokens", "12");
        Assert.Equal(0, code);
        // tok-tiny512's own chat_template, rendered by hand here, no BOS added.
        var ids = Tokenizer.FromFolder(TokenizerDir).Encode("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", addSpecialTokens: false);
        var expected = GreedyByHand(ids, 12);
        Assert.Equal(expected + Environment.NewLine, output);
        Assert.NotEqual(Expected("Name a colour.", 12), expected);
    }

    [Theory]
    [InlineData("--chat", "--chat-template-jinja", "{% raise_exception('no') %}", "--chat-template", "jinja")]
    [InlineData("--temperature", "warm")]
    [InlineData("--max-new-tokens")]
    public void Bad_flags_are_user_errors(params string[] flags)
    {
        using var dir = TestSetup.TempDir();
        Assert.Equal(2, Run("", ["inference", Config(dir), "--prompt", "x", .. flags]).Code);
    }

    [Fact]
    public void A_missing_adapter_is_a_user_error()
    {
        using var dir = TestSetup.TempDir();
        var config = Config(dir, "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true");
        Assert.Equal(2, Run("", "inference", config, "--prompt", "x").Code);
    }

    [Fact]
    public void Streaming_holds_back_split_multibyte_characters()
    {
        // The Llama-2 tokenizer spells characters outside its vocabulary as byte tokens, one per UTF-8 byte.
        var tokenizer = Tokenizer.FromFolder(TestSetup.Data("tok-llama2"));
        const string text = "naïve ☃ and 🙂 done";
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        Assert.Contains(ids, id => tokenizer.IdToToken(id)!.StartsWith("<0x"));
        var stream = new Axolotl.Inference.StreamingDecoder(tokenizer);
        var pieces = ids.Select(stream.Push).Append(stream.Flush()).ToList();
        Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
        Assert.Equal(tokenizer.Decode(ids), string.Concat(pieces));
        Assert.Equal(text, string.Concat(pieces));
    }
}
