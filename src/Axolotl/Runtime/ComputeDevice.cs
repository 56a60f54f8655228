using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Runtime;

/// <summary>
/// The <c>device</c> key: where the model, its batches and everything computed from them live. auto is Axolotl's own
/// rule (cuda when torch sees a GPU, else cpu); cpu, cuda and cuda:N pin it. A GPU needs the TorchSharp-cuda-linux
/// package in place of TorchSharp-cpu (README: GPU).
/// </summary>
internal static class ComputeDevice
{
    public const string Values = "auto, cpu, cuda or cuda:N";

    /// <summary>The setting in canonical form (lower case; cuda:N with N a plain number), or null when it is none of <see cref="Values"/>.</summary>
    public static string? Normalize(string? setting)
    {
        var s = (setting ?? "").Trim().ToLowerInvariant();
        if (s is "auto" or "cpu" or "cuda") return s;
        if (s.StartsWith("cuda:", StringComparison.Ordinal)
            && int.TryParse(s.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out var index))
            return $"cuda:{index}";
        return null;
    }

    /// <summary>
    /// The device a setting names on this machine. <paramref name="where"/> says where it was set (a config file and
    /// line, or a flag), for the one sentence a user gets when the GPU asked for is not there.
    /// </summary>
    public static Device Resolve(string setting, string where = "device")
    {
        TorchRuntime.EnsureLoaded();
        var s = Normalize(setting) ?? throw new UserError($"{where}: '{setting}' is not a device; use {Values}.");
        if (s == "cpu") return CPU;
        // is_available loads the CUDA backend when the package has one; with TorchSharp-cpu it is simply false.
        bool available = cuda.is_available();
        if (s == "auto") return available ? new Device(DeviceType.CUDA, 0) : CPU;
        if (!available)
            throw new UserError($"{where}: device '{s}' asks for a GPU, but CUDA is not available here (TorchSharp's CPU package, or no GPU visible); set device: cpu or auto, or build with TorchSharp-cuda-linux (README, GPU).");
        int index = s == "cuda" ? 0 : int.Parse(s.AsSpan(5), CultureInfo.InvariantCulture);
        int count = cuda.device_count();
        if (index >= count)
            throw new UserError($"{where}: device '{s}' names GPU {index}, but {count} GPU(s) are visible (cuda:0 to cuda:{count - 1}).");
        return new Device(DeviceType.CUDA, index);
    }

    public static bool IsCuda(Device device) => device.type == DeviceType.CUDA;

    /// <summary>TorchSharp's Device has no value equality; cuda and cuda:0 are the same GPU.</summary>
    public static bool Same(Device a, Device b) =>
        a.type == b.type && (a.type != DeviceType.CUDA || Math.Max(0, a.index) == Math.Max(0, b.index));

    /// <summary>
    /// Seeds the CUDA generators from torch's CPU generator. TorchSharp cannot read or restore a CUDA generator's state,
    /// but the CPU generator's state is what checkpoints save and what gradient checkpointing replays: deriving each
    /// CUDA seed from it makes GPU dropout as reproducible (resume, recomputation) as CPU dropout. Returns the seed.
    /// </summary>
    public static long ReseedCuda()
    {
        long seed;
        using (var draw = randint(0, long.MaxValue, [1], dtype: ScalarType.Int64, device: CPU)) seed = draw.item<long>();
        cuda.manual_seed_all(seed);
        return seed;
    }

    /// <summary>For the console: "cpu" or "cuda:0".</summary>
    public static string Describe(Device device) => device.type == DeviceType.CUDA ? $"cuda:{Math.Max(0, device.index)}" : device.type.ToString().ToLowerInvariant();
}
