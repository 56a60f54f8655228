using Axolotl.Training;

namespace Axolotl.Tests.Training;

/// <summary>transformers' get_*_schedule_with_warmup lambdas, evaluated by hand.</summary>
public class LrScheduleTests
{
    [Theory]
    [InlineData("linear", 0, 0.0)]
    [InlineData("linear", 1, 0.5)]
    [InlineData("linear", 2, 1.0)]
    [InlineData("linear", 6, 0.5)]   // (10 - 6) / (10 - 2)
    [InlineData("linear", 10, 0.0)]
    [InlineData("cosine", 1, 0.5)]
    [InlineData("cosine", 2, 1.0)]
    [InlineData("cosine", 6, 0.5)]   // 0.5 * (1 + cos(pi * 4/8))
    [InlineData("cosine", 10, 0.0)]
    [InlineData("constant_with_warmup", 1, 0.5)]
    [InlineData("constant_with_warmup", 9, 1.0)]
    [InlineData("constant", 0, 1.0)] // transformers' "constant" has no warmup
    public void Multipliers_follow_transformers(string kind, int step, double expected) =>
        Assert.Equal(expected, new LrSchedule(kind, WarmupSteps: 2, TotalSteps: 10).Multiplier(step), 12);

    [Fact]
    public void Cosine_quarter_point()
    {
        var s = new LrSchedule("cosine", 0, 8);
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 0.25)), s.Multiplier(2), 12);
    }

    [Theory]
    [InlineData(2, 1.0)]
    [InlineData(6, 0.55)]   // 0.9 * 0.5 * (1 + cos(pi * 4/8)) + 0.1
    [InlineData(10, 0.1)]
    public void Cosine_min_lr_ratio_floors_the_decay(int step, double expected) =>
        Assert.Equal(expected, new LrSchedule("cosine", 2, 10) { MinLrRatio = 0.1 }.Multiplier(step), 12);

    [Theory]
    [InlineData(1, 0.5)]    // warmup unchanged
    [InlineData(5, 0.55)]   // constant from int(10 * 0.8) = 8: progress (5 - 2) / (8 - 2)
    [InlineData(8, 0.1)]
    [InlineData(9, 0.1)]    // held at the floor
    public void Cosine_constant_lr_ratio_reaches_the_floor_early_and_holds_it(int step, double expected) =>
        Assert.Equal(expected, new LrSchedule("cosine", 2, 10) { MinLrRatio = 0.1, ConstantLrRatio = 0.8 }.Multiplier(step), 12);

    [Fact]
    public void Cosine_constant_lr_ratio_alone_is_plain_cosine()
    {
        // Axolotl only switches schedules when cosine_min_lr_ratio is set (and non-zero).
        var plain = new LrSchedule("cosine", 2, 10);
        foreach (var step in Enumerable.Range(0, 11))
        {
            Assert.Equal(plain.Multiplier(step), (plain with { ConstantLrRatio = 0.8 }).Multiplier(step), 15);
            Assert.Equal(plain.Multiplier(step), (plain with { MinLrRatio = 0 }).Multiplier(step), 15);
        }
    }

    [Theory]
    [InlineData(null, null, 1000, 30)]   // Axolotl: min(int(0.03 * total), 100)
    [InlineData(null, null, 10000, 100)]
    [InlineData(null, null, 20, 0)]
    [InlineData(null, 0.1, 95, 10)]      // ceil(0.1 * 95)
    [InlineData(7, null, 1000, 7)]
    public void Warmup_resolution(int? steps, double? ratio, int total, int expected) =>
        Assert.Equal(expected, LrSchedule.ResolveWarmup(steps, ratio, total));
}
