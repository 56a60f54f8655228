using System.Collections.Concurrent;

namespace Axolotl.Data;

/// <summary>
/// What happens to a row that cannot be used (invalid JSON, a missing or mistyped field, an empty conversation, an
/// unknown role): <c>bad_rows: fail</c> (the default, as Axolotl, whose loaders and strategies raise) stops at the first
/// with its file and line; <c>bad_rows: skip</c> leaves it out and counts it by reason, so nothing vanishes silently.
/// </summary>
internal sealed class BadRows(bool skip)
{
    readonly ConcurrentDictionary<string, (int Count, string First)> byReason = new();

    public bool Skip { get; } = skip;

    /// <summary>Fails with the message, or records it under its reason when skipping.</summary>
    public void Report(string reason, string message)
    {
        if (!Skip) throw new UserError(message + " (set `bad_rows: skip` to leave such rows out and count them)");
        byReason.AddOrUpdate(reason, _ => (1, message), (_, v) => (v.Count + 1, v.First));
    }

    public void Report(BadRowError e) => Report(e.Reason, e.Message);

    public int Total => byReason.Values.Sum(v => v.Count);

    /// <summary>Counts per reason, with the first message of each, in a stable order.</summary>
    public IReadOnlyList<(string Reason, int Count, string First)> Counts =>
        byReason.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => (kv.Key, kv.Value.Count, kv.Value.First)).ToList();

    public string Summary() => string.Join("; ", Counts.Select(c => $"{c.Count} {c.Reason} (first: {c.First})"));
}

/// <summary>A row that cannot be used; <see cref="Reason"/> is the bucket it is counted in when bad rows are skipped.</summary>
internal sealed class BadRowError(string reason, string message) : UserError(message)
{
    public string Reason { get; } = reason;
}
