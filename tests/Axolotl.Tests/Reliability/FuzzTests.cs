using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Tokenization;
using CsCheck;

namespace Axolotl.Tests.Reliability;

/// <summary>
/// The readers of user files under random and mutated input: each gives a result or a <see cref="UserError"/>, never
/// another exception and never a hang (<see cref="FuzzAssert"/>). Iteration counts keep the set to a few seconds.
/// </summary>
public class FuzzTests
{
    static readonly string[] ExampleConfigs = Directory.GetFiles(TestSetup.Data("axolotl-configs"))
        .Where(f => f.EndsWith(".yml") || f.EndsWith(".yaml")).Order().Select(File.ReadAllText).ToArray();

    [Fact]
    public void Config_loader_on_random_yaml_like_text()
    {
        FuzzAssert.OnlyUserErrors(text => ConfigLoader.Parse(text, "fuzz.yml"), FuzzGen.Text(FuzzGen.YamlAlphabet), iterations: 400);
    }

    [Fact]
    public void Config_loader_on_mutated_example_configs()
    {
        Assert.True(ExampleConfigs.Length > 10);
        FuzzAssert.OnlyUserErrors(text => ConfigLoader.Parse(text, "fuzz.yml"), FuzzGen.Mutations(ExampleConfigs, FuzzGen.YamlAlphabet), iterations: 400);
    }

    /// <summary>Opens the bytes as a safetensors file and reads every tensor it claims to hold.</summary>
    static object? OpenSafetensors(TempDir dir, byte[] bytes)
    {
        var path = dir[$"{Guid.NewGuid():N}.safetensors"];
        File.WriteAllBytes(path, bytes);
        try
        {
            var file = SafetensorsFile.Open(path);
            foreach (var name in file.Entries.Keys) file.Read(name).Dispose();
            return file;
        }
        finally { File.Delete(path); }
    }

    static byte[][] SafetensorsSeeds()
    {
        var fixtures = Directory.GetFiles(TestSetup.Data("safetensors-fixtures"), "*.safetensors").Order().Select(File.ReadAllBytes).ToList();
        // One more with several dtypes and metadata, so that edits meet every branch of the header reader.
        using var dir = TestSetup.TempDir();
        using (var a = TorchSharp.torch.arange(6, TorchSharp.torch.ScalarType.Float32).reshape(2, 3))
        using (var b = TorchSharp.torch.ones(4, TorchSharp.torch.ScalarType.BFloat16))
        using (var c = TorchSharp.torch.tensor(new long[] { 1, 2 }))
            SafetensorsFile.Write(dir["x.safetensors"], [new("a", a), new("b", b), new("c", c)], new Dictionary<string, string> { ["format"] = "pt" });
        fixtures.Add(File.ReadAllBytes(dir["x.safetensors"]));
        return [.. fixtures];
    }

    [Fact]
    public void Safetensors_reader_on_random_bytes()
    {
        using var dir = TestSetup.TempDir();
        var randomHeader = Gen.Select(Gen.UInt[0, 300], Gen.Byte.Array[0, 300], (length, rest) => (byte[])[.. BitConverter.GetBytes((ulong)length), .. rest]);
        FuzzAssert.OnlyUserErrors(bytes => OpenSafetensors(dir, bytes), Gen.OneOf(Gen.Byte.Array[0, 64], randomHeader), iterations: 200);
    }

    [Fact]
    public void Safetensors_reader_on_mutated_files()
    {
        using var dir = TestSetup.TempDir();
        FuzzAssert.OnlyUserErrors(bytes => OpenSafetensors(dir, bytes), FuzzGen.Mutations(SafetensorsSeeds()), iterations: 300);
    }

    [Fact]
    public void Safetensors_reader_on_mutated_headers()
    {
        using var dir = TestSetup.TempDir();
        // Edits of the JSON header, re-framed with a correct length, reach the checks of dtype, shape and offsets.
        var seeds = SafetensorsSeeds();
        var headers = seeds.Select(s => System.Text.Encoding.UTF8.GetString(s, 8, (int)BitConverter.ToUInt64(s))).ToList();
        var framed = Gen.Select(Gen.Int[0, seeds.Length - 1], FuzzGen.Mutations(headers, FuzzGen.JsonAlphabet, jsonEdits: true), (i, header) =>
        {
            var h = FuzzGen.Utf8(header);
            var data = seeds[i].AsSpan(8 + (int)BitConverter.ToUInt64(seeds[i]));
            return (byte[])[.. BitConverter.GetBytes((ulong)h.Length), .. h, .. data];
        });
        FuzzAssert.OnlyUserErrors(bytes => OpenSafetensors(dir, bytes), framed, iterations: 300);
    }

    static readonly Lazy<Tokenizer> TinyTokenizer = new(() => Tokenizer.FromFolder(TestSetup.Data("tok-tiny512")));

    /// <summary>Reads the text as a dataset file and turns its rows into alpaca examples.</summary>
    static object? ReadRows(TempDir dir, string text, string extension)
    {
        var path = dir[$"{Guid.NewGuid():N}{extension}"];
        File.WriteAllText(path, text);
        try
        {
            var rows = RowReader.Read(path, null);
            var alpaca = PromptStrategies.For(new DatasetConfig { Path = path, Type = "alpaca" }, new StrategyContext(() => TinyTokenizer.Value, 256, false));
            return rows.Select(r => alpaca.Tokenize(r).ToList()).ToList();
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Row_reader_on_mutated_jsonl_lines()
    {
        using var dir = TestSetup.TempDir();
        var rows = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reliability", "axolotl_alpaca.json")))!.AsArray();
        var jsonl = string.Join('\n', rows.Select(r => r!.ToJsonString())) + "\n";
        FuzzAssert.OnlyUserErrors(text => ReadRows(dir, text, ".jsonl"), FuzzGen.Mutations([jsonl], FuzzGen.JsonAlphabet, jsonEdits: true), iterations: 300);
    }

    [Fact]
    public void Row_reader_on_mutated_json_arrays()
    {
        using var dir = TestSetup.TempDir();
        var array = File.ReadAllText(TestSetup.Data("reliability", "axolotl_alpaca.json"));
        FuzzAssert.OnlyUserErrors(text => ReadRows(dir, text, ".json"), FuzzGen.Mutations([array], FuzzGen.JsonAlphabet, jsonEdits: true), iterations: 300);
    }

    [Fact]
    public void Tokenizer_loader_on_mutated_tokenizer_json()
    {
        using var dir = TestSetup.TempDir();
        var source = TestSetup.Data("tok-tiny512");
        var seed = File.ReadAllText(Path.Combine(source, "tokenizer.json"));
        var config = File.ReadAllText(Path.Combine(source, "tokenizer_config.json"));
        FuzzAssert.OnlyUserErrors(text =>
        {
            var folder = Directory.CreateDirectory(dir[Guid.NewGuid().ToString("N")]).FullName;
            File.WriteAllText(Path.Combine(folder, "tokenizer.json"), text);
            File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config);
            try
            {
                var tokenizer = Tokenizer.FromFolder(folder);
                return tokenizer.Decode(tokenizer.Encode("Hello world, héllo\n  123!"));
            }
            finally { Directory.Delete(folder, true); }
        }, FuzzGen.Mutations([seed], FuzzGen.JsonAlphabet, jsonEdits: true), iterations: 200);
    }

    [Fact]
    public void Jinja_parser_and_renderer_on_mutated_chat_templates()
    {
        var templates = Axolotl.Templates.ChatTemplates.BundledNames.Select(n => Axolotl.Templates.ChatTemplates.BundledSource(n)!).ToList();
        Assert.NotEmpty(templates);
        var messages = new System.Text.Json.Nodes.JsonArray(
            new System.Text.Json.Nodes.JsonObject { ["role"] = "system", ["content"] = "Be brief." },
            new System.Text.Json.Nodes.JsonObject { ["role"] = "user", ["content"] = "Hi" },
            new System.Text.Json.Nodes.JsonObject { ["role"] = "assistant", ["content"] = "Hello" });
        FuzzAssert.OnlyUserErrors(text => new Axolotl.Templates.JinjaChatTemplate(text, "fuzz.jinja", new("<s>", "</s>")).Render(messages, addGenerationPrompt: true),
            FuzzGen.Mutations(templates, FuzzGen.JinjaAlphabet), iterations: 300);
    }
}
