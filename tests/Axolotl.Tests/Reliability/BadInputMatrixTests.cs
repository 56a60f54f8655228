using System.Text;
using System.Text.Json.Nodes;

namespace Axolotl.Tests.Reliability;

/// <summary>
/// Issue 9's bad-input matrix, one test per row, each through the CLI's one error-handling place: exit code 2 and one
/// sentence naming the file, line or key. Rows covered elsewhere through the real process (EndToEnd/BadInputTests):
/// a missing config file, an unknown command, a mistyped top-level key, a missing model folder, a row missing a field.
/// </summary>
[Collection(CapturedConsole.Name)]
public class BadInputMatrixTests
{
    static readonly string TinyLlama = TestSetup.Data("reference", "models", "tiny-llama");

    const string TwoRows = """
        {"instruction": "Name a colour.", "input": "", "output": "Blue."}
        {"instruction": "Say hi.", "input": "", "output": "Hi."}

        """;

    /// <summary>A config that trains tiny-llama on <paramref name="data"/> rows; <paramref name="extra"/> lines are appended.</summary>
    static string WriteConfig(TempDir dir, string? model = null, string? dataPath = null, string data = TwoRows, string extra = "", string? outputDir = null)
    {
        if (dataPath == null) File.WriteAllText(dataPath = dir["data.jsonl"], data);
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {model ?? TinyLlama}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dataPath}
                type: alpaca
            sequence_len: 1024
            learning_rate: 0.001
            max_steps: 1
            output_dir: {outputDir ?? dir["out"]}
            {extra}
            """);
        return dir["c.yml"];
    }

    static (int, string, string) Train(string config) => InProcessCli.Run("train", config);

    // ---- the config file ----

    [Fact]
    public void Config_yaml_syntax_error_names_line_and_column()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], "base_model: x\nlearning_rate: 0.001\ndatasets: [a, b\nsequence_len: 8\n");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", dir["c.yml"]), "c.yml:4:", "YAML syntax error");
    }

    [Fact]
    public void Config_tab_indentation_is_a_syntax_error_with_its_place()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], "base_model: x\ndatasets:\n\t- path: a\n");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", dir["c.yml"]), "c.yml:3:", "YAML syntax error");
    }

    [Fact]
    public void Config_mistyped_dataset_key_suggests_the_known_one()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir);
        File.WriteAllText(config, File.ReadAllText(config).Replace("    type: alpaca", "    tpye: alpaca"));
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "c.yml:5:", "'tpye'", "did you mean 'type'");
    }

    [Fact]
    public void Config_several_unknown_keys_are_named_in_one_message()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, extra: "micro_bach_size: 2\nfoo_bar_baz: 1");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "'micro_bach_size'", "did you mean 'micro_batch_size'", "'foo_bar_baz'");
    }

    [Fact]
    public void Config_wrong_type_names_key_and_value()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, extra: "micro_batch_size: two");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "c.yml:10:", "'micro_batch_size' must be a whole number, not 'two'");
    }

    [Fact]
    public void Config_list_where_one_value_belongs()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir);
        File.WriteAllText(config, File.ReadAllText(config).Replace("learning_rate: 0.001", "learning_rate: [0.001, 0.002]"));
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "'learning_rate' must be a single value");
    }

    [Fact]
    public void Config_key_that_is_a_list_is_refused_with_its_place()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, extra: "[a, b]: 1");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "c.yml:10:", "a key must be a name");
    }

    [Fact]
    public void Config_contradictory_options_are_named()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, extra: "warmup_steps: 10\nwarmup_ratio: 0.1");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "warmup_ratio", "warmup_steps and warmup_ratio are mutually exclusive");
    }

    [Fact]
    public void Config_unknown_excess_length_strategy_lists_the_choices()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, extra: "excess_length_strategy: cut");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", config), "excess_length_strategy 'cut'", "drop, truncate, raise");
    }

    [Fact]
    public void Config_empty_file_says_what_a_config_is()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], "");
        InProcessCli.AssertUserError(InProcessCli.Run("validate", dir["c.yml"]), "c.yml", "must be a YAML mapping");
    }

    [Fact]
    public void Config_path_that_is_a_folder()
    {
        using var dir = TestSetup.TempDir();
        InProcessCli.AssertUserError(InProcessCli.Run("validate", dir.Path), dir.Path, "config file not found");
    }

    [UnreadableFileFact]
    public void Config_file_unreadable()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir);
        File.SetUnixFileMode(config, UnixFileMode.None);
        InProcessCli.AssertUserError(UnreadableFileCli.Run("validate", config), "c.yml", "cannot be read");
    }

    // ---- the model folder ----

    /// <summary>A copy of tiny-llama that a test may break.</summary>
    static string CopyModel(TempDir dir)
    {
        var model = Directory.CreateDirectory(dir["model"]).FullName;
        foreach (var f in Directory.GetFiles(TinyLlama)) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        return model;
    }

    static void EditConfigJson(string model, Action<JsonObject> edit)
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(model, "config.json")))!.AsObject();
        edit(json);
        File.WriteAllText(Path.Combine(model, "config.json"), json.ToJsonString());
    }

    [Fact]
    public void Model_folder_without_config_json()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        File.Delete(Path.Combine(model, "config.json"));
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), model, "no config.json");
    }

    [Fact]
    public void Model_config_json_that_is_not_json()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        File.WriteAllText(Path.Combine(model, "config.json"), "{\"model_type\": \"llama\",\n  hidden_size: 64}");
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), "config.json", "invalid JSON at line 2");
    }

    [Fact]
    public void Model_unknown_architecture()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        EditConfigJson(model, c => c["model_type"] = "mamba");
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), "model_type 'mamba' is not supported", "llama");
    }

    [Fact]
    public void Model_folder_without_weights()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        File.Delete(Path.Combine(model, "model.safetensors"));
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), model, "no model.safetensors");
    }

    // ---- safetensors ----

    /// <summary>Rewrites model.safetensors with its header edited and the data section kept (or cut to <paramref name="keepData"/> bytes).</summary>
    static string EditWeights(string model, Action<JsonObject>? edit = null, long? keepData = null)
    {
        var path = Path.Combine(model, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        int headerLength = (int)BitConverter.ToUInt64(bytes);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, headerLength))!.AsObject();
        edit?.Invoke(header);
        var newHeader = Encoding.UTF8.GetBytes(header.ToJsonString());
        var data = bytes.AsSpan(8 + headerLength);
        if (keepData is long keep) data = data[..(int)keep];
        using var stream = File.Create(path);
        stream.Write(BitConverter.GetBytes((ulong)newHeader.Length));
        stream.Write(newHeader);
        stream.Write(data);
        return path;
    }

    [Fact]
    public void Safetensors_truncated_file()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = EditWeights(model, keepData: 100_000);
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "fall outside the data section", "truncated");
    }

    [Fact]
    public void Safetensors_header_longer_than_the_file()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = Path.Combine(model, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        BitConverter.GetBytes((ulong)bytes.Length).CopyTo(bytes, 0);
        File.WriteAllBytes(weights, bytes);
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, $"header length {bytes.Length} is larger than the file");
    }

    [Fact]
    public void Safetensors_shorter_than_its_length_prefix()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = Path.Combine(model, "model.safetensors");
        File.WriteAllBytes(weights, [1, 2, 3]);
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "not a safetensors file");
    }

    [Fact]
    public void Safetensors_header_that_is_not_json()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = Path.Combine(model, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        bytes[8] = (byte)'x';
        File.WriteAllBytes(weights, bytes);
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "header is not valid JSON");
    }

    [Fact]
    public void Safetensors_overlapping_offsets()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = EditWeights(model, h => h["model.embed_tokens.weight"]!["data_offsets"] = new JsonArray(0, 131072));
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "overlaps tensor", "embed_tokens");
    }

    [Fact]
    public void Safetensors_offsets_out_of_range()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = EditWeights(model, h => h["lm_head.weight"]!["data_offsets"] = new JsonArray(10_000_000, 10_131_072));
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "'lm_head.weight'", "fall outside the data section");
    }

    [Fact]
    public void Safetensors_offsets_that_disagree_with_the_shape()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = EditWeights(model, h => h["lm_head.weight"]!["shape"] = new JsonArray(512, 32));
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "'lm_head.weight' has 131072 bytes but shape [512, 32]");
    }

    [Fact]
    public void Safetensors_unsupported_dtype()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        var weights = EditWeights(model, h => h["lm_head.weight"]!["dtype"] = "F8_E4M3");
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), weights, "dtype F8_E4M3, which is not supported");
    }

    [Fact]
    public void Safetensors_shape_not_matching_config_json()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        EditConfigJson(model, c => c["intermediate_size"] = 128);
        InProcessCli.AssertUserError(Train(WriteConfig(dir, model)), "model.safetensors", "has shape [176, 64] but config.json implies [128, 64]");
    }

    [UnreadableFileFact]
    public void Safetensors_file_unreadable()
    {
        using var dir = TestSetup.TempDir();
        var model = CopyModel(dir);
        File.SetUnixFileMode(Path.Combine(model, "model.safetensors"), UnixFileMode.None);
        InProcessCli.AssertUserError(UnreadableFileCli.Run("train", WriteConfig(dir, model)), "model.safetensors", "denied");
    }

    // ---- the tokenizer ----

    [UnreadableFileFact]
    public void Tokenizer_json_unreadable()
    {
        using var dir = TestSetup.TempDir();
        var tokenizer = Directory.CreateDirectory(dir["tok"]).FullName;
        File.Copy(TestSetup.Data("tok-tiny512", "tokenizer.json"), Path.Combine(tokenizer, "tokenizer.json"));
        File.SetUnixFileMode(Path.Combine(tokenizer, "tokenizer.json"), UnixFileMode.None);
        var config = WriteConfig(dir);
        File.WriteAllText(config, File.ReadAllText(config).Replace(TestSetup.Data("tok-tiny512"), tokenizer));
        InProcessCli.AssertUserError(UnreadableFileCli.Run("preprocess", config), "tokenizer.json", "denied");
    }

    [Fact]
    public void Tokenizer_json_that_is_not_json()
    {
        using var dir = TestSetup.TempDir();
        var tokenizer = Directory.CreateDirectory(dir["tok"]).FullName;
        File.WriteAllText(Path.Combine(tokenizer, "tokenizer.json"), "{\"version\": \"1.0\", \"model\": ");
        var config = WriteConfig(dir);
        File.WriteAllText(config, File.ReadAllText(config).Replace(TestSetup.Data("tok-tiny512"), tokenizer));
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "tokenizer.json is not valid JSON");
    }

    [Fact]
    public void Tokenizer_folder_without_tokenizer_json()
    {
        using var dir = TestSetup.TempDir();
        var tokenizer = Directory.CreateDirectory(dir["tok"]).FullName;
        var config = WriteConfig(dir);
        File.WriteAllText(config, File.ReadAllText(config).Replace(TestSetup.Data("tok-tiny512"), tokenizer));
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "tokenizer.json is missing");
    }

    // ---- datasets ----

    [Fact]
    public void Dataset_invalid_json_line_names_file_and_line()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + "{\"instruction\": \"x\", \"output\": \"y\"\n");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl, line 3", "invalid JSON");
    }

    [Fact]
    public void Dataset_json_array_with_a_syntax_error_names_the_line()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["data.json"], "[\n{\"instruction\": \"a\", \"output\": \"b\"},\n{\"instruction\": \"a\" \"output\": \"b\"}\n]");
        var config = WriteConfig(dir, dataPath: dir["data.json"]);
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.json", "invalid JSON at line 3");
    }

    [Fact]
    public void Dataset_line_that_is_not_an_object()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + "[1, 2]\n");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl, line 3", "expected a JSON object");
    }

    [Fact]
    public void Dataset_row_with_a_key_given_twice()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + "{\"instruction\": \"x\", \"output\": \"y\", \"output\": \"z\"}\n");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl, line 3", "invalid JSON", "output");
    }

    [Fact]
    public void Dataset_field_of_the_wrong_type_names_row_and_field()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + "{\"instruction\": 5, \"output\": \"y\"}\n");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl, line 3", "instruction");
    }

    [Fact]
    public void Dataset_empty_file()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: "");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl", "has no rows");
    }

    [Fact]
    public void Dataset_file_of_blank_lines()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: "\n  \n\n");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl", "has no rows");
    }

    [Fact]
    public void Dataset_file_missing()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, dataPath: dir["nowhere.jsonl"]);
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "nowhere.jsonl", "does not exist");
    }

    [UnreadableFileFact]
    public void Dataset_file_unreadable()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir);
        File.SetUnixFileMode(dir["data.jsonl"], UnixFileMode.None);
        InProcessCli.AssertUserError(UnreadableFileCli.Run("preprocess", config), "data.jsonl", "cannot be read");
    }

    static readonly string LongRow = $"{{\"instruction\": \"Repeat.\", \"input\": \"\", \"output\": \"{string.Join(' ', Enumerable.Repeat("words and more words", 400))}\"}}\n";

    [Fact]
    public void Sequences_longer_than_sequence_len_are_dropped_and_counted()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + LongRow);
        var (code, stdout, stderr) = InProcessCli.Run("preprocess", config);
        Assert.True(code == 0, stderr);
        Assert.Contains("3 rows → 2 examples", stdout);
        Assert.Contains("dropped 1 longer than sequence_len 1024", stdout);
    }

    [Fact]
    public void Sequences_longer_than_sequence_len_are_truncated_when_asked()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + LongRow, extra: "excess_length_strategy: truncate");
        var (code, stdout, stderr) = InProcessCli.Run("preprocess", config);
        Assert.True(code == 0, stderr);
        Assert.Contains("3 rows → 3 examples", stdout);
        Assert.DoesNotContain("dropped", stdout);
    }

    [Fact]
    public void Sequences_longer_than_sequence_len_raise_names_the_row()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: TwoRows + LongRow, extra: "excess_length_strategy: raise");
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "data.jsonl, line 3", "longer than sequence_len 1024", "excess_length_strategy: raise");
    }

    [Fact]
    public void Dataset_empty_after_filtering()
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir, data: LongRow);
        InProcessCli.AssertUserError(InProcessCli.Run("preprocess", config), "no training examples are left", "1 were longer than sequence_len 1024");
    }

    // ---- outputs ----

    [Fact]
    public void Output_dir_under_a_regular_file()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["a-file"], "");
        var config = WriteConfig(dir, outputDir: Path.Combine(dir["a-file"], "out"));
        InProcessCli.AssertUserError(Train(config), "output_dir", "a-file", "is not writable");
    }
}
