using System.Text;
using Axolotl.IO;
using static TorchSharp.torch;

namespace Axolotl.Tests.IO;

public class SafetensorsTests
{
    static void WriteRaw(string path, string header, int dataBytes)
    {
        using var f = File.Create(path);
        var h = Encoding.UTF8.GetBytes(header);
        f.Write(BitConverter.GetBytes((ulong)h.Length));
        f.Write(h);
        f.Write(new byte[dataBytes]);
    }

    [Fact]
    public void Round_trips_f32_and_bf16_with_metadata()
    {
        using var dir = TestSetup.TempDir();
        using var scope = NewDisposeScope();
        var a = randn(3, 5);
        var b = randn(7).to(ScalarType.BFloat16);
        SafetensorsFile.Write(dir["t.safetensors"], [new("a", a), new("b", b)], new Dictionary<string, string> { ["format"] = "pt" });
        var file = SafetensorsFile.Open(dir["t.safetensors"]);
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal("BF16", file.Entries["b"].DType);
        Assert.True(file.Read("a").eq(a).all().item<bool>());
        Assert.True(file.Read("b").eq(b).all().item<bool>());
        // Data starts 8-byte aligned, as the format asks.
        Assert.Equal(0, BitConverter.ToInt64(File.ReadAllBytes(dir["t.safetensors"]), 0) % 8);
    }

    [Theory]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8, "outside the data section")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}""", 16, "needs 16")]
    [InlineData("""{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 16, "overlaps")]
    [InlineData("""{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}""", 16, "dtype Q4")]
    [InlineData("""{"w": nope}""", 16, "not valid JSON")]
    public void Corrupt_headers_are_refused_with_the_reason(string header, int dataBytes, string reason)
    {
        using var dir = TestSetup.TempDir();
        WriteRaw(dir["bad.safetensors"], header, dataBytes);
        var e = Assert.Throws<UserError>(() => SafetensorsFile.Open(dir["bad.safetensors"]));
        Assert.Contains(reason, e.Message);
        Assert.Contains("bad.safetensors", e.Message);
    }

    [Fact]
    public void A_header_longer_than_the_file_is_refused()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllBytes(dir["short.safetensors"], [.. BitConverter.GetBytes(1000UL), .. "{}"u8.ToArray()]);
        Assert.Contains("larger than the file", Assert.Throws<UserError>(() => SafetensorsFile.Open(dir["short.safetensors"])).Message);
    }

    [Fact]
    public void Reads_files_written_by_python_safetensors()
    {
        using var scope = NewDisposeScope();
        var tensors = SafetensorsFile.Open(TestSetup.Data("safetensors-fixtures", "tensors.safetensors"));
        Assert.Equal(new long[] { 1, 2, 3, 4, 5, 6 }, tensors.Read("arr").data<long>().ToArray());
        Assert.Equal(new long[] { 2, 3 }, tensors.Read("arr_2d").shape);
        var module = SafetensorsFile.Open(TestSetup.Data("safetensors-fixtures", "module_load.safetensors"));
        Assert.Equal(Enumerable.Repeat(1f, 10), module.Read("lin1.weight").data<float>().ToArray());
        Assert.Equal(Enumerable.Repeat(2f, 4), module.Read("lin2.weight").data<float>().ToArray());
    }
}
