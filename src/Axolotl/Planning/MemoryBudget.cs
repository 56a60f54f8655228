using System.Globalization;
using Axolotl.Config;
using Axolotl.Runtime;

namespace Axolotl.Planning;

/// <summary>
/// How much memory a run may take: the cpu entry of max_memory (or its only entry) when the config has one, else what
/// the machine has available now. Axolotl passes max_memory ({0: "20GiB", cpu: "60GiB"}) to transformers' device_map
/// loading; here everything lives in this process's memory, so its cpu budget is what the plan refuses against.
/// </summary>
internal static class MemoryBudget
{
    /// <summary>The bytes a run may use and how the refusal names them.</summary>
    public static (long Bytes, string Source) For(AxolotlConfig config) =>
        FromMaxMemory(config.MaxMemory) is long limit
            ? (limit, "max_memory's budget is")
            : (Hardware.AvailableMemoryBytes(), "available memory is");

    /// <summary>
    /// The budget max_memory sets: its "cpu" entry, or its only entry; null without max_memory, or when it names only
    /// several GPUs (placement across GPUs, which this process does not do). Throws <see cref="FormatException"/> with the
    /// reason when a size is malformed.
    /// </summary>
    public static long? FromMaxMemory(IReadOnlyDictionary<string, string>? maxMemory)
    {
        if (maxMemory is null || maxMemory.Count == 0) return null;
        foreach (var (device, size) in maxMemory) ParseSize(size, device); // every entry well-formed, as transformers checks
        if (maxMemory.TryGetValue("cpu", out var cpu)) return ParseSize(cpu, "cpu");
        return maxMemory.Count == 1 ? ParseSize(maxMemory.Values.Single(), maxMemory.Keys.Single()) : null;
    }

    /// <summary>
    /// transformers' convert_file_size_to_int: a byte count, or an integer with GiB/MiB/KiB (powers of 1024), GB/MB/KB
    /// (powers of 1000; a lowercase final b means bits, an eighth of that). Case-insensitive but for that b.
    /// </summary>
    public static long ParseSize(string size, string device)
    {
        var text = size.Trim();
        if (long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var bytes)) return bytes;
        (string Unit, long Scale)[] units = [("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000)];
        foreach (var (unit, scale) in units)
            if (text.ToUpperInvariant().EndsWith(unit, StringComparison.Ordinal)
                && long.TryParse(text[..^unit.Length].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var count))
            {
                long value = checked(count * scale);
                return unit.Length == 2 && text.EndsWith('b') ? value / 8 : value;
            }
        throw new FormatException($"entry {device}: '{size}' is not a size; write an integer followed by a unit, e.g. 20GiB or 16GB");
    }
}
