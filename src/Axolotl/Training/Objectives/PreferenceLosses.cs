using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Training.Objectives;

/// <summary>
/// The preference losses of TRL 1.8 as pure functions of per-sequence log-probabilities (1-D tensors, one entry per
/// pair or example), each returning the per-pair (per-example) loss so callers sum or average it. Autograd flows through
/// them: the log-probabilities of the policy carry the gradient, the reference's do not.
/// </summary>
internal static class PreferenceLosses
{
    /// <summary>DPO loss types built here (TRL's DPOTrainer names); any other is refused by name.</summary>
    public static readonly IReadOnlyList<string> DpoLossTypes =
        ["sigmoid", "hinge", "ipo", "robust", "bco_pair", "nca_pair", "sppo_hard", "apo_zero", "apo_down", "sigmoid_norm", "exo_pair"];

    /// <summary>
    /// TRL's DPOTrainer loss for one <paramref name="lossType"/> with the reverse-KL scores (standard DPO): the log
    /// ratios policy − reference of chosen and rejected, β the temperature (IPO's τ). ipo and sigmoid_norm divide each
    /// score by its completion's token count (TRL's length normalisation); label smoothing enters robust and exo_pair
    /// only, as in TRL 1.8 (its sigmoid loss has none).
    /// </summary>
    public static Tensor Dpo(string lossType, double beta, double labelSmoothing, Tensor chosenLogps, Tensor rejectedLogps,
        Tensor refChosenLogps, Tensor refRejectedLogps, Tensor chosenTokens, Tensor rejectedTokens)
    {
        var chosen = chosenLogps - refChosenLogps;
        var rejected = rejectedLogps - refRejectedLogps;
        var delta = chosen - rejected;
        switch (lossType)
        {
            case "sigmoid": return -F.logsigmoid(beta * delta);
            case "hinge": return F.relu(1 - beta * delta);
            case "ipo":
            {
                var normalised = chosen / chosenTokens.clamp_min(1) - rejected / rejectedTokens.clamp_min(1);
                return (normalised - 1 / (2 * beta)).square();
            }
            case "sigmoid_norm":
                return -F.logsigmoid(beta * (chosen / chosenTokens.clamp_min(1) - rejected / rejectedTokens.clamp_min(1)));
            case "robust":
                return (-(1 - labelSmoothing) * F.logsigmoid(beta * delta) + labelSmoothing * F.logsigmoid(-beta * delta))
                       / (1 - 2 * labelSmoothing);
            case "exo_pair":
            {
                // KL between softmax(β·scores) over {chosen, rejected} and the smoothed labels [1 − ε, ε].
                var qw = F.sigmoid(beta * delta);
                var ql = F.sigmoid(-beta * delta);
                return qw * (F.logsigmoid(beta * delta) - Math.Log(1 - labelSmoothing)) + ql * (F.logsigmoid(-beta * delta) - Math.Log(labelSmoothing));
            }
            case "bco_pair": return -F.logsigmoid(beta * chosen) - F.logsigmoid(-beta * rejected);
            case "nca_pair":
                return -F.logsigmoid(beta * chosen) - 0.5 * F.logsigmoid(-beta * chosen) - 0.5 * F.logsigmoid(-beta * rejected);
            case "sppo_hard": return (chosen - 0.5 / beta).square() + (rejected + 0.5 / beta).square();
            case "apo_zero": return 1 - F.sigmoid(beta * chosen) + F.sigmoid(beta * rejected);
            case "apo_down": return F.sigmoid(beta * chosen) + 1 - F.sigmoid(beta * delta);
            default:
                throw new UserError($"dpo_loss_type '{lossType}' is not implemented; use one of {string.Join(", ", DpoLossTypes)}.");
        }
    }

    /// <summary>
    /// SimPO as TRL's CPOTrainer computes it (loss_type simpo): on the length-averaged log-probabilities,
    /// z = (chosen − rejected) − γ/β, loss = −(1 − ε)·log σ(βz) − ε·log σ(−βz). The BC term (cpo_alpha × the chosen NLL) is
    /// added by the caller.
    /// </summary>
    public static Tensor Simpo(double beta, double gamma, double labelSmoothing, Tensor chosenAverageLogps, Tensor rejectedAverageLogps)
    {
        var z = chosenAverageLogps - rejectedAverageLogps - gamma / beta;
        return -(1 - labelSmoothing) * F.logsigmoid(beta * z) - labelSmoothing * F.logsigmoid(-beta * z);
    }

    /// <summary>
    /// ORPO's odds-ratio term (TRL's ORPOTrainer.odds_ratio_loss) on the length-averaged log-probabilities:
    /// log_odds = (c − r) − (log(1 − e^c) − log(1 − e^r)), ratio = log σ(log_odds); the loss to minimise is
    /// NLL(chosen) − mean(β · ratio), so this returns β·ratio per pair (to be subtracted) with ratio and log_odds for logging.
    /// </summary>
    public static (Tensor Scaled, Tensor Ratio, Tensor LogOdds) OrpoOddsRatio(double beta, Tensor chosenAverageLogps, Tensor rejectedAverageLogps)
    {
        var logOdds = chosenAverageLogps - rejectedAverageLogps - (Log1mexp(chosenAverageLogps) - Log1mexp(rejectedAverageLogps));
        var ratio = F.logsigmoid(logOdds);
        return (beta * ratio, ratio, logOdds);
    }

    /// <summary>log(1 − eˣ) for x &lt; 0, split at −ln 2 to avoid cancellation (as TRL's log1mexp).</summary>
    public static Tensor Log1mexp(Tensor x) =>
        where(x.lt(-Math.Log(2)), (-x.exp()).log1p(), (-x.expm1()).log());

    /// <summary>
    /// KTO (TRL's KTOTrainer, loss_type kto): with the batch's KL estimate kl (clamped at 0, no gradient),
    /// desirable examples lose w_d·(1 − σ(β(logratio − kl))) and undesirable ones w_u·(1 − σ(β(kl − logratio))).
    /// </summary>
    public static (Tensor Desirable, Tensor Undesirable) Kto(double beta, Tensor desirableLogratios, Tensor undesirableLogratios, Tensor kl,
        double desirableWeight, double undesirableWeight) =>
        (desirableWeight * (1 - F.sigmoid(beta * (desirableLogratios - kl))),
         undesirableWeight * (1 - F.sigmoid(beta * (kl - undesirableLogratios))));
}
