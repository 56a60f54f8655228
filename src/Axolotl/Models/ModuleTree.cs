using System.Reflection;
using static TorchSharp.torch;

namespace Axolotl.Models;

/// <summary>
/// Module surgery by HF path, shared by everything that wraps or swaps a model's layers (LoRA, quantization, merging):
/// the model itself never knows which of its linears were replaced.
/// </summary>
internal static class ModuleTree
{
    internal static (nn.Module Parent, string Leaf) Parent(nn.Module root, string path)
    {
        var parts = path.Split('.');
        nn.Module current = root;
        foreach (var part in parts[..^1])
            current = current.named_children().First(c => c.name == part).module;
        return (current, parts[^1]);
    }

    /// <summary>
    /// TorchSharp keeps a submodule both in its registry and in the field forward() reads: swap both. The field is the
    /// one holding the old instance, since a module may register a child under an HF name that is not its field name.
    /// </summary>
    internal static void ReplaceChild(nn.Module parent, string name, nn.Module replacement)
    {
        var old = parent.named_children().First(c => c.name == name).module;
        var field = parent.GetType().GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
                        .FirstOrDefault(f => ReferenceEquals(f.GetValue(parent), old))
                    ?? throw new InvalidOperationException($"{parent.GetType().Name} has no field holding '{name}' to wrap");
        parent.register_module(name, null!);
        parent.register_module(name, replacement);
        field.SetValue(parent, replacement);
    }
}
