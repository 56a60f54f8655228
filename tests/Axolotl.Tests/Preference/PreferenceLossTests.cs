using Axolotl.Training.Objectives;
using static TorchSharp.torch;

namespace Axolotl.Tests.Preference;

/// <summary>
/// Each loss against its formula on one hand-picked pair. Expected values were computed with Python's math module from
/// the formulas in TRL 1.8 (dpo_trainer.py, experimental/cpo, experimental/orpo, kto_trainer.py), not from this code:
/// policy chosen/rejected log-probs −10/−12, reference −11/−11, β 0.1, completions of 4 and 5 tokens.
/// </summary>
public class PreferenceLossTests
{
    static Tensor T(double v) => tensor(new[] { v }, dtype: ScalarType.Float64);

    static double Dpo(string type, double smoothing = 0) =>
        PreferenceLosses.Dpo(type, 0.1, smoothing, T(-10), T(-12), T(-11), T(-11), T(4), T(5)).item<double>();

    [Fact]
    public void Sigmoid_is_minus_log_sigmoid_of_beta_times_the_margin() => Assert.Equal(0.5981388693815918, Dpo("sigmoid"), 12);

    [Fact]
    public void Hinge_is_relu_of_one_minus_beta_times_the_margin() => Assert.Equal(0.8, Dpo("hinge"), 12);

    [Fact]
    public void Ipo_squares_the_length_normalised_margin_minus_half_over_beta() => Assert.Equal(20.7025, Dpo("ipo"), 10);

    [Fact]
    public void Robust_uses_label_smoothing() => Assert.Equal(0.5314722027149251, Dpo("robust", 0.2), 12);

    [Fact]
    public void Equal_policy_and_reference_give_ln2_for_sigmoid()
    {
        var loss = PreferenceLosses.Dpo("sigmoid", 0.1, 0, T(-7), T(-9), T(-7), T(-9), T(3), T(3)).item<double>();
        Assert.Equal(Math.Log(2), loss, 12);
    }

    [Fact]
    public void Unknown_loss_type_is_refused_by_name()
    {
        var e = Assert.Throws<UserError>(() => Dpo("aot"));
        Assert.Contains("'aot'", e.Message);
    }

    [Fact]
    public void Simpo_subtracts_gamma_over_beta_from_the_average_margin()
    {
        var loss = PreferenceLosses.Simpo(0.1, 0.5, 0.2, T(-2), T(-3)).item<double>();
        Assert.Equal(0.8330152523999527, loss, 12);
    }

    [Fact]
    public void Orpo_log_odds_and_ratio_match_the_formula()
    {
        var (scaled, ratio, logOdds) = PreferenceLosses.OrpoOddsRatio(0.1, T(-0.5), T(-1.5));
        Assert.Equal(1.6802696706417346, logOdds.item<double>(), 12);
        Assert.Equal(-0.1708592171464785, ratio.item<double>(), 12);
        Assert.Equal(-0.017085921714647852, scaled.item<double>(), 12);
    }

    [Fact]
    public void Log1mexp_is_stable_on_both_sides_of_minus_ln2()
    {
        // Python: math.log(-math.expm1(x))
        var expected = new (double X, double Y)[] { (-1e-8, -18.420680748952364), (-0.3, -1.3502256128148467), (-0.7, -0.6863410028083852), (-5.0, -0.006760749449488566), (-40.0, 0.0) };
        foreach (var (x, y) in expected) Assert.Equal(y, PreferenceLosses.Log1mexp(T(x)).item<double>(), 10);
    }

    [Fact]
    public void Kto_weights_desirable_and_undesirable_terms()
    {
        var (desirable, undesirable) = PreferenceLosses.Kto(0.1, T(2.0), T(-1.0), T(0.3), 1.0, 1.33);
        Assert.Equal(0.457602059225649, desirable.item<double>(), 12);
        Assert.Equal(0.6218357725048661, undesirable.item<double>(), 12);
    }
}
