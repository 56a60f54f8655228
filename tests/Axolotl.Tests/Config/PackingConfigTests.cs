using Axolotl.Config;

namespace Axolotl.Tests.Config;

public class PackingConfigTests
{
    const string Minimal = """
        base_model: some/model
        datasets:
          - path: data.jsonl
            type: alpaca
        learning_rate: 0.0002
        """;

    static AxolotlConfig Parse(string extra) => ConfigLoader.Parse(Minimal + "\n" + extra + "\n", "cfg.yml");

    [Fact]
    public void Sample_packing_loads_with_axolotls_defaults_and_derived_values()
    {
        var c = Parse("sample_packing: true");
        Assert.Equal((true, true, true), (c.SamplePacking, c.EvalSamplePacking, c.PadToSequenceLen));
        Assert.Equal("follows sample_packing", c.Sources["pad_to_sequence_len"]);
        Assert.Equal((100_000, 200, false, true), (c.SamplePackingGroupSize, c.SamplePackingBinSize, c.SamplePackingSequentially, c.MultipackRealBatches));
        Assert.Empty(c.Warnings);

        c = Parse("sample_packing: true\neval_sample_packing: false\npad_to_sequence_len: false\nsample_packing_bin_size: 8\nsample_packing_group_size: 1000\nsample_packing_sequentially: true\nmultipack_real_batches: false");
        Assert.Equal((false, false, 8, 1000, true, false),
            (c.EvalSamplePacking, c.PadToSequenceLen, c.SamplePackingBinSize, c.SamplePackingGroupSize, c.SamplePackingSequentially, c.MultipackRealBatches));
        Assert.Null(Parse("").PadToSequenceLen); // without packing, unset stays unset: batches pad to their longest row
    }

    [Fact]
    public void Packing_keys_it_does_not_implement_are_warned_or_refused()
    {
        var c = Parse("sample_packing: true\nsample_packing_mp_start_method: spawn");
        Assert.Contains("'sample_packing_mp_start_method: spawn' only sets parallelism", Assert.Single(c.Warnings));
        var e = Assert.Throws<UnsupportedKeysError>(() => Parse("sample_packing: true\nsample_packing_eff_est: 0.95"));
        Assert.Equal(["sample_packing_eff_est"], e.Keys);
        Assert.Contains("'sample_packing_bin_size' must be at least 1", Assert.ThrowsAny<UserError>(() => Parse("sample_packing_bin_size: 0")).Message);
    }
}
