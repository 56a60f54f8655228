using Axolotl.Models;
using static TorchSharp.torch;

namespace Axolotl.Export;

/// <summary>
/// A GGUF file as a base model: its architecture from the <c>{arch}.*</c> metadata (through a config.json built from
/// it, so family defaults apply as for a Hugging Face folder) and its tensors dequantized to the model's dtype on load,
/// undoing the export's layout changes (<see cref="GgufArchitecture"/>).
/// </summary>
internal static class GgufModel
{
    public static bool IsGguf(string path) => path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) && File.Exists(path);

    /// <summary>The GGUF's architecture as the config.json transformers would have for it.</summary>
    public static System.Text.Json.Nodes.JsonObject ReadConfigJson(string path)
    {
        using var file = new GgufReader(path);
        return GgufArchitecture.ConfigJson(file);
    }

    public static void LoadInto(CausalLM model, string path)
    {
        using var file = new GgufReader(path);
        var architecture = GgufArchitecture.For(model.Config);
        var expected = model.BaseStateDict().ToList();
        var names = expected.Select(p => architecture.GgufName(p.Key)).ToList();
        var missing = names.Where(n => n is null || !file.Tensors.ContainsKey(n)).ToList();
        if (missing.Count > 0)
            throw new UserError($"{path}: the GGUF file lacks {missing.Count} tensor(s) the architecture needs, e.g. {string.Join(", ", missing.Take(3))}.");
        var unexpected = file.Tensors.Keys.Except(names.Select(n => n!)).Where(n => n != "rope_freqs.weight").ToList();
        if (unexpected.Count > 0)
            throw new UserError($"{path}: the GGUF file holds {unexpected.Count} tensor(s) this architecture does not use, e.g. {string.Join(", ", unexpected.Take(3))}.");
        using var _ = no_grad();
        for (int i = 0; i < expected.Count; i++)
        {
            using var scope = NewDisposeScope();
            var (hf, parameter) = expected[i];
            var info = file.Tensors[names[i]!];
            if (!info.Shape.SequenceEqual(parameter.shape))
                throw new UserError($"{path}: tensor '{info.Name}' has shape [{string.Join(", ", info.Shape)}] but the metadata implies [{string.Join(", ", parameter.shape)}].");
            var values = tensor(file.ReadFloats(info)).reshape(info.Shape);
            parameter.copy_(architecture.FromGguf(hf, values));
        }
    }
}
