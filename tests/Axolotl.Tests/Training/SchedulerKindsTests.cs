using System.Text.Json.Nodes;
using Axolotl.Training;

namespace Axolotl.Tests.Training;

/// <summary>
/// The remaining lr_scheduler values (transformers' get_scheduler functions and Axolotl's rex, quadratic warmup and jagged
/// restarts), each against its formula evaluated here by hand. Multiplier(k) is the factor of update k + 1.
/// </summary>
public class SchedulerKindsTests
{
    static LrSchedule Make(string kind, int warmup, int total, string? kwargs = null, double lr = 1e-3) =>
        new(kind, warmup, total) { SchedulerKwargs = kwargs is null ? null : JsonNode.Parse(kwargs)!.AsObject(), LearningRate = lr };

    [Theory]
    [InlineData(2, 0.25)]   // (2/4)²
    [InlineData(3, 0.5625)] // (3/4)²
    public void Quadratic_warmup_squares_the_linear_ramp(int step, double expected) =>
        Assert.Equal(expected, (Make("cosine", 4, 10) with { QuadraticWarmup = true }).Multiplier(step), 12);

    [Fact]
    public void Quadratic_warmup_then_plain_cosine_even_with_a_floor()
    {
        // Axolotl prefers the quadratic warmup over cosine_min_lr_ratio (with a warning).
        var s = Make("cosine", 4, 10) with { QuadraticWarmup = true, MinLrRatio = 0.3 };
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 2 / 6.0)), s.Multiplier(6), 12);
        Assert.Equal(0.0, s.Multiplier(10), 12);
    }

    [Theory]
    [InlineData(1, 0.5)]
    [InlineData(4, 0.5)]  // progress 1/4, two cycles: 0.5 → 0.5·(1 + cos(π/2))
    [InlineData(6, 1.0)]  // progress 1/2: the second cycle restarts at the peak
    [InlineData(8, 0.5)]
    [InlineData(10, 0.0)]
    public void Cosine_with_restarts_restarts_num_cycles_times(int step, double expected) =>
        Assert.Equal(expected, Make("cosine_with_restarts", 2, 10, "{\"num_cycles\": 2}").Multiplier(step), 12);

    [Fact]
    public void Cosine_with_restarts_defaults_to_one_cycle()
    {
        var s = Make("cosine_with_restarts", 2, 10);
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 0.5)), s.Multiplier(6), 12);
    }

    [Theory]
    [InlineData(6, 0.325)]  // ((1e-3 − 1e-4)·(1 − 4/8)² + 1e-4) / 1e-3
    [InlineData(10, 0.1)]
    [InlineData(12, 0.1)]   // past the end: lr_end
    public void Polynomial_decays_to_lr_end_with_power(int step, double expected) =>
        Assert.Equal(expected, Make("polynomial", 2, 10, "{\"lr_end\": 1e-4, \"power\": 2}").Multiplier(step), 12);

    [Fact]
    public void Polynomial_defaults_are_linear_to_1e_minus_7()
    {
        var s = Make("polynomial", 0, 10);
        Assert.Equal(((1e-3 - 1e-7) * 0.5 + 1e-7) / 1e-3, s.Multiplier(5), 12);
    }

    [Fact]
    public void Inverse_sqrt_decays_with_the_warmup_as_timescale()
    {
        var s = Make("inverse_sqrt", 4, 100);
        Assert.Equal(0.5, s.Multiplier(2), 12);
        Assert.Equal(1.0, s.Multiplier(4), 12);
        Assert.Equal(0.5, s.Multiplier(16), 12); // 1 / √((16 + 4 − 4) / 4)
        Assert.Equal(1 / Math.Sqrt(3), Make("inverse_sqrt", 0, 100).Multiplier(20_000), 12); // timescale 10,000 without warmup: √(30,000 / 10,000)
    }

    [Theory]
    [InlineData("{\"min_lr_rate\": 0.2}")]
    [InlineData("{\"min_lr\": 2e-4}")]
    public void Cosine_with_min_lr_floors_at_the_rate_or_the_absolute_lr(string kwargs)
    {
        var s = Make("cosine_with_min_lr", 2, 10, kwargs);
        Assert.Equal(0.6, s.Multiplier(6), 12);  // 0.5·0.8 + 0.2
        Assert.Equal(0.2, s.Multiplier(10), 12);
    }

    [Fact]
    public void Cosine_warmup_with_min_lr_warms_from_one_step_and_decays_a_step_ahead()
    {
        var s = Make("cosine_warmup_with_min_lr", 4, 10, "{\"min_lr_rate\": 0.1}");
        Assert.Equal(0.25, s.Multiplier(0), 12);
        Assert.Equal(1.0, s.Multiplier(3), 12);
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI / 6)) * 0.9 + 0.1, s.Multiplier(4), 12);
        var fromRate = Make("cosine_warmup_with_min_lr", 4, 10, "{\"min_lr_rate\": 0.1, \"warmup_lr_rate\": 0.4}");
        Assert.Equal(0.4 + 0.6 * 2 / 3.0, fromRate.Multiplier(2), 12);
    }

    [Theory]
    [InlineData(1, 0.5)]
    [InlineData(5, 1.0)]
    [InlineData(6, 1.0)]   // decay starts: cosine at progress 0
    [InlineData(8, 0.5)]   // progress 2/4
    [InlineData(10, 0.0)]  // after the decay: min_lr_ratio
    public void Warmup_stable_decay_has_three_phases(int step, double expected) =>
        Assert.Equal(expected, Make("warmup_stable_decay", 2, 10, "{\"num_decay_steps\": 4}").Multiplier(step), 12);

    [Fact]
    public void Warmup_stable_decay_shapes_and_floor_follow_its_kwargs()
    {
        var s = Make("warmup_stable_decay", 2, 10, "{\"num_decay_steps\": 4, \"decay_type\": \"linear\", \"warmup_type\": \"1-sqrt\", \"min_lr_ratio\": 0.1}");
        Assert.Equal((1 - Math.Sqrt(0.5)) * 0.9 + 0.1, s.Multiplier(1), 12);
        Assert.Equal(0.5 * 0.9 + 0.1, s.Multiplier(8), 12);
        Assert.Equal(0.1, s.Multiplier(12), 12);
        var stable = Make("warmup_stable_decay", 2, 100, "{\"num_decay_steps\": 4, \"num_stable_steps\": 3}");
        Assert.Equal(1.0, stable.Multiplier(4), 12);
        Assert.Equal(0.0, stable.Multiplier(9), 12); // 2 + 3 + 4: past the decay whatever the total
    }

    [Fact]
    public void Rex_is_read_one_step_ahead_and_decays_as_z_over_point1_plus_point9z()
    {
        var s = Make("rex", 2, 10);
        Assert.Equal(0.5, s.Multiplier(0), 12);  // last_step 1 of 2 warmup steps
        Assert.Equal(1.0, s.Multiplier(1), 12);
        double z = 7 / 8.0;
        Assert.Equal(z / (0.1 + 0.9 * z), s.Multiplier(2), 12);
        Assert.Equal(0.0, s.Multiplier(9), 12);
        var floored = s with { MinLrRatio = 0.1 };
        Assert.Equal(0.1 + 0.9 * z / (0.1 + 0.9 * z), floored.Multiplier(2), 12);
        Assert.Equal(0.1, floored.Multiplier(9), 12);
    }

    [Fact]
    public void Jagged_restarts_drop_to_the_floor_every_n_steps_and_warm_back_up()
    {
        var jagged = new LrSchedule.JaggedRestarts(Steps: 4, WarmupSteps: 2, AnnealSteps: 1, MinScale: 0.001);
        // The scheduler is built at last_epoch 0, so update k + 1 reads step k + 1 of both itself and the inner schedule.
        var s = Make("constant", 0, 20) with { Jagged = jagged };
        double[] expected = [1, 1, 1, 0.001, 0.5 * 0.999 + 0.001, 1, 1, 0.001];
        for (int k = 0; k < expected.Length; k++) Assert.Equal(expected[k], s.Multiplier(k), 12);
        var linear = Make("linear", 0, 20) with { Jagged = jagged };
        Assert.Equal((20 - 5) / 20.0 * (0.5 * 0.999 + 0.001), linear.Multiplier(4), 12);
    }
}
