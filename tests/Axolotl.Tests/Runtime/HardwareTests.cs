using Axolotl.Runtime;

namespace Axolotl.Tests.Runtime;

public class HardwareTests
{
    [Fact]
    public void Proc_fields_are_read_by_key_whatever_the_padding_including_ten_digit_values()
    {
        // The kernel's own padding: spaces while the number is short, a lone tab once it has 8 digits or more.
        var fields = Hardware.ParseProcFields([
            "Name:\tdotnet",
            "VmPeak:\t12345678901 kB",
            "VmHWM:\t10044244 kB",
            "VmRSS:\t  656000 kB",
            "MemAvailable:   24117248 kB",
            "Threads:\t2",
            "Cpus_allowed_list:\t0-1",
        ]);
        Assert.Equal(12345678901L, fields["VmPeak"]);
        Assert.Equal(10044244L, fields["VmHWM"]);
        Assert.Equal(656000L, fields["VmRSS"]);
        Assert.Equal(24117248L, fields["MemAvailable"]);
        Assert.Equal(2L, fields["Threads"]);
        Assert.False(fields.ContainsKey("Name"));
        Assert.False(fields.ContainsKey("Cpus_allowed_list")); // "0-1" is not a number
    }

    [Fact]
    public void Live_memory_readings_are_consistent()
    {
        if (!File.Exists("/proc/self/status")) { Console.WriteLine("skipped: no /proc on this system"); return; }
        long rss = Hardware.RssKb(), peak = Hardware.PeakRssKb();
        Assert.InRange(rss, 1, peak);
        long available = Hardware.AvailableMemoryBytes(), total = Hardware.TotalMemoryBytes();
        Assert.InRange(available, 1, total);
        if (Hardware.HeapStats() is { } heap) Assert.True(heap.Arena >= heap.InUse && heap.InUse > 0, $"{heap}");
    }

    [Fact]
    public void The_allocation_free_probe_reads_what_proc_status_reads()
    {
        if (!File.Exists("/proc/self/statm")) return; // not Linux: nothing to compare
        using var probe = new QuietMemoryProbe();
        // statm and status count the same resident pages; the two reads are a moment apart.
        long statusBytes = Hardware.RssKb() * 1024, probeBytes = probe.ResidentBytes();
        Assert.InRange(probeBytes, statusBytes - (64L << 20), statusBytes + (64L << 20));
        Assert.True(probe.ResidentBytes() > 0);
        if (Hardware.HeapStats() is { } heap) Assert.InRange(Hardware.HeapLiveBytes(), 1, heap.InUse + heap.Mapped + (64L << 20));
    }
}
