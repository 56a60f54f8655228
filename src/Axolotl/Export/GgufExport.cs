using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Axolotl.Config;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Runtime;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Export;

/// <summary>The tensor types a whole GGUF file is written in (llama.cpp's --outtype names).</summary>
internal enum GgufOutType { F32, F16, BF16, Q8_0, Q4_0 }

/// <summary>
/// <c>axolotl export-gguf</c> and <c>merge-lora --gguf</c>: the merged model (base + adapter, as merge-lora builds it)
/// written as one GGUF v3 file that llama.cpp loads: tensors under llama.cpp's names and layouts, the hyperparameters,
/// the tokenizer. Tensors are converted and written one at a time (in slices of rows), so beside the fp32 model only
/// a slice is ever held.
/// </summary>
internal static class GgufExport
{
    public static readonly string[] OutTypes = ["f32", "f16", "bf16", "q8_0", "q4_0"];

    public static GgufOutType ParseOutType(string value) => value.ToLowerInvariant() switch
    {
        "f32" => GgufOutType.F32,
        "f16" => GgufOutType.F16,
        "bf16" => GgufOutType.BF16,
        "q8_0" => GgufOutType.Q8_0,
        "q4_0" => GgufOutType.Q4_0,
        "q4_k_m" => throw new UserError("GGUF type q4_k_m is not built yet (its k-quant blocks and llama.cpp's per-tensor mix); use q8_0 or q4_0, or llama.cpp's llama-quantize on an f16 export."),
        _ => throw new UserError($"GGUF type '{value}' is not supported (use one of {string.Join(", ", OutTypes)})."),
    };

    /// <summary>export-gguf: merges the adapter when the config has one (else exports base_model as it is) and writes the file.</summary>
    public static string Run(AxolotlConfig config, GgufOutType type, string? outPath, IRecipeReporter reporter)
    {
        Training.Objectives.RewardTraining.RefuseGeneration(config, "export-gguf");
        TorchRuntime.EnsureLoaded();
        var (model, tokenizer) = config.HasLora ? MergeRecipe.LoadMerged(config, reporter) : LoadPlain(config, reporter);
        using var tokenizerFiles = new TemporaryFolder();
        TokenizerFiles.CopyWithConfigChanges(config.TokenizerFolder(), tokenizerFiles.Path, config, tokenizer);
        var path = outPath ?? Path.Combine(config.OutputDir, $"model-{type.ToString().ToLowerInvariant()}.gguf");
        Write(model, tokenizerFiles.Path, tokenizer, type, path, reporter, Path.GetFileName(Path.TrimEndingDirectorySeparator(config.BaseModel)));
        return path;
    }

    static (CausalLM, Tokenizer) LoadPlain(AxolotlConfig config, IRecipeReporter reporter)
    {
        var tokenizer = ModelLoading.LoadTokenizer(config);
        var architecture = ModelLoading.WithTokenizerVocab(ModelLoading.Architecture(config), config, tokenizer);
        var model = CausalLM.Create(architecture, ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(config.BaseModel, growVocabSeed: config.Seed);
        reporter.Info($"No adapter in the config: exporting {config.BaseModel} as it is.");
        return (model, tokenizer);
    }

    /// <summary>Writes <paramref name="model"/> with the tokenizer in <paramref name="tokenizerFolder"/> to <paramref name="path"/> (atomically).</summary>
    public static void Write(CausalLM model, string tokenizerFolder, Tokenizer tokenizer, GgufOutType type, string path, IRecipeReporter reporter, string name = "model")
    {
        var architecture = GgufArchitecture.For(model.Config);
        if (model.Config.ModelType == "mistral" && model.Config.SlidingWindow is int window && window < model.Config.MaxPositionEmbeddings)
            reporter.Warn($"GGUF export: llama.cpp runs Mistral as a Llama and ignores sliding_window {window}: past {window} tokens of context its answers differ from this model's.");
        var writer = new GgufWriter();
        architecture.AddHyperparameters(writer);
        writer.Add("general.name", GgufValue.Of(name));
        writer.Add("general.file_type", GgufValue.Of(type switch
        {
            GgufOutType.F32 => 0u, GgufOutType.F16 => 1u, GgufOutType.Q4_0 => 2u, GgufOutType.Q8_0 => 7u, _ => 32u,
        }));
        if (type is GgufOutType.Q8_0 or GgufOutType.Q4_0) writer.Add("general.quantization_version", GgufValue.Of(2u));
        foreach (var warning in GgufTokenizer.AddMetadata(writer, tokenizerFolder, tokenizer, model.Config.VocabSize)) reporter.Warn(warning);

        var sources = new Dictionary<string, Func<Tensor>>();
        var ropeFactors = architecture.RopeFrequencyFactors();
        if (ropeFactors is not null)
        {
            writer.AddTensor(new GgufTensorInfo("rope_freqs.weight", [ropeFactors.Length], GgmlType.F32));
            sources["rope_freqs.weight"] = () => tensor(ropeFactors);
        }
        bool tied = model.lm_head is null;
        foreach (var (hf, parameter) in model.BaseStateDict())
        {
            var ggufName = architecture.GgufName(hf)
                ?? throw new UserError($"GGUF export: tensor '{hf}' has no place in llama.cpp's {architecture.Name} layout.");
            var shape = parameter.shape;
            bool head = ggufName == "output.weight" || tied && ggufName == "token_embd.weight";
            writer.AddTensor(new GgufTensorInfo(ggufName, shape.Reverse().ToArray(), TensorType(ggufName, shape, type, head)));
            sources[ggufName] = () => architecture.ToGguf(hf, parameter);
        }

        long total = writer.Tensors.Sum(t => t.ByteSize);
        reporter.Info($"Writing {path}: {architecture.Name}, {writer.Tensors.Count} tensors, {type.ToString().ToLowerInvariant()}, {total / 1048576.0:F1} MiB.");
        int lastTenth = 0;
        AtomicFile(path, stream => writer.Write(stream, (info, s) =>
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            WriteTensor(sources[info.Name]().contiguous(), info.Type, s);
        }, done =>
        {
            int tenth = done * 10 / writer.Tensors.Count;
            if (tenth > lastTenth) { lastTenth = tenth; reporter.Info($"  GGUF: {done}/{writer.Tensors.Count} tensors written"); }
        }));
        reporter.Info($"Saved {Path.GetFullPath(path)} ({new FileInfo(path).Length / 1048576.0:F1} MiB).");
    }

    static void AtomicFile(string path, Action<Stream> write) => IO.AtomicFile.Write(path, write);

    /// <summary>
    /// Per tensor, as llama.cpp's tools choose: norms, biases and other vectors stay F32; matrices take the asked type.
    /// A block type needs rows that are a whole number of 32-weight blocks, else the matrix falls back to F16 (as the
    /// converter does). q4_0 keeps the output head (the embeddings, when tied) at Q8_0: llama-quantize gives it more
    /// bits too (Q6_K, which is not written here).
    /// </summary>
    static GgmlType TensorType(string name, long[] shape, GgufOutType type, bool head)
    {
        if (shape.Length == 1 || name.EndsWith("_norm.weight")) return GgmlType.F32;
        var wanted = type switch
        {
            GgufOutType.F32 => GgmlType.F32,
            GgufOutType.F16 => GgmlType.F16,
            GgufOutType.BF16 => GgmlType.BF16,
            GgufOutType.Q8_0 => GgmlType.Q8_0,
            _ => head ? GgmlType.Q8_0 : GgmlType.Q4_0,
        };
        return GgmlQuants.IsBlockType(wanted) && shape[^1] % GgmlQuants.BlockSize != 0 ? GgmlType.F16 : wanted;
    }

    /// <summary>Converts and writes one tensor, a slice of rows at a time (bounded memory, and no span over 2 GiB).</summary>
    static void WriteTensor(Tensor t, GgmlType type, Stream stream)
    {
        var flat = t.reshape(-1);
        long n = flat.shape[0];
        long sliceElements = 1L << 22; // a multiple of the block size
        var floats = new float[Math.Min(n, sliceElements)];
        byte[] bytes = [];
        for (long start = 0; start < n; start += sliceElements)
        {
            int count = (int)Math.Min(sliceElements, n - start);
            using (var slice = flat.narrow(0, start, count).contiguous()) slice.data<float>().CopyTo(floats.AsSpan(0, count));
            var values = floats.AsSpan(0, count);
            int size = (int)GgmlQuants.ByteSize(type, count);
            if (bytes.Length < size) bytes = new byte[size];
            var output = bytes.AsSpan(0, size);
            switch (type)
            {
                case GgmlType.F32: MemoryMarshal.AsBytes(values).CopyTo(output); break;
                case GgmlType.F16:
                    for (int i = 0; i < count; i++) BinaryPrimitives.WriteHalfLittleEndian(output[(2 * i)..], (Half)values[i]);
                    break;
                case GgmlType.BF16:
                    for (int i = 0; i < count; i++) BinaryPrimitives.WriteUInt16LittleEndian(output[(2 * i)..], ToBFloat16(values[i]));
                    break;
                default: GgmlQuants.Quantize(type, values, output); break;
            }
            stream.Write(output);
        }
    }

    /// <summary>fp32 → bf16 rounding to nearest even (NaN kept quiet), as torch and gguf-py round.</summary>
    static ushort ToBFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7fffffff) > 0x7f800000) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    }

    sealed class TemporaryFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("axolotl-gguf-").FullName;
        public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
    }
}
