using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Axolotl.IO;

namespace Axolotl.Training;

/// <summary>
/// <c>loss_curve.html</c>: the training loss per logged step (a polyline) and eval_loss (dots) as inline SVG, one file
/// that opens anywhere without scripts or network.
/// </summary>
internal static class LossCurve
{
    public const string FileName = "loss_curve.html";
    const double Width = 800, Height = 420, Left = 70, Right = 20, Top = 40, Bottom = 50;

    public static void Write(string outputDir, IReadOnlyList<JsonObject> history, string title) =>
        AtomicFile.WriteAllText(Path.Combine(outputDir, FileName), Html(history, title));

    static List<(double Step, double Value)> Series(IReadOnlyList<JsonObject> history, string key) =>
        history.Where(e => e[key] != null && e["step"] != null).Select(e => (Number(e["step"]!), Number(e[key]!)))
               .Where(p => double.IsFinite(p.Item2)).ToList();

    /// <summary>Any JSON number as a double: entries made in this run hold ints and doubles, restored ones JSON elements.</summary>
    internal static double Number(JsonNode node) => double.Parse(node.ToJsonString(), CultureInfo.InvariantCulture);

    public static string Html(IReadOnlyList<JsonObject> history, string title)
    {
        var train = Series(history, "loss");
        var eval = Series(history, "eval_loss");
        var all = train.Concat(eval).ToList();
        var svg = new StringBuilder();
        svg.Append(Inv($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{Height}\" viewBox=\"0 0 {Width} {Height}\" font-family=\"sans-serif\" font-size=\"12\">\n"));
        if (all.Count > 0)
        {
            var xTicks = Ticks(0, all.Max(p => p.Step));
            var yTicks = Ticks(all.Min(p => p.Value), all.Max(p => p.Value));
            double x0 = xTicks[0], x1 = xTicks[^1], y0 = yTicks[0], y1 = yTicks[^1];
            double X(double v) => Left + (v - x0) / Math.Max(1e-12, x1 - x0) * (Width - Left - Right);
            double Y(double v) => Height - Bottom - (v - y0) / Math.Max(1e-12, y1 - y0) * (Height - Top - Bottom);
            foreach (var t in xTicks)
                svg.Append(Inv($"<line x1=\"{X(t):0.##}\" y1=\"{Height - Bottom}\" x2=\"{X(t):0.##}\" y2=\"{Height - Bottom + 5}\" stroke=\"#333\"/><text x=\"{X(t):0.##}\" y=\"{Height - Bottom + 18}\" text-anchor=\"middle\">{t:G6}</text>\n"));
            foreach (var t in yTicks)
                svg.Append(Inv($"<line x1=\"{Left - 5}\" y1=\"{Y(t):0.##}\" x2=\"{Width - Right}\" y2=\"{Y(t):0.##}\" stroke=\"#ddd\"/><text x=\"{Left - 8}\" y=\"{Y(t) + 4:0.##}\" text-anchor=\"end\">{t:G6}</text>\n"));
            // Axes after the grid, so the grid line at the lowest tick does not cover the x axis.
            svg.Append(Inv($"<line x1=\"{Left}\" y1=\"{Height - Bottom}\" x2=\"{Width - Right}\" y2=\"{Height - Bottom}\" stroke=\"#333\"/>\n"));
            svg.Append(Inv($"<line x1=\"{Left}\" y1=\"{Top}\" x2=\"{Left}\" y2=\"{Height - Bottom}\" stroke=\"#333\"/>\n"));
            svg.Append(Inv($"<text x=\"{(Left + Width - Right) / 2}\" y=\"{Height - 10}\" text-anchor=\"middle\">step</text>\n"));
            svg.Append(Inv($"<text x=\"15\" y=\"{(Top + Height - Bottom) / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 15 {(Top + Height - Bottom) / 2})\">loss</text>\n"));
            if (train.Count > 0)
                svg.Append("<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"")
                   .AppendJoin(' ', train.Select(p => Inv($"{X(p.Step):0.##},{Y(p.Value):0.##}")))
                   .Append("\"/>\n");
            foreach (var (step, value) in eval)
                svg.Append(Inv($"<circle cx=\"{X(step):0.##}\" cy=\"{Y(value):0.##}\" r=\"4\" fill=\"#ff7f0e\"><title>step {step}: eval_loss {value:G6}</title></circle>\n"));
            svg.Append(Inv($"<text x=\"{Width - Right}\" y=\"{Top - 12}\" text-anchor=\"end\"><tspan fill=\"#1f77b4\">— training loss</tspan>{(eval.Count > 0 ? "  <tspan fill=\"#ff7f0e\">● eval_loss</tspan>" : "")}</text>\n"));
        }
        else svg.Append(Inv($"<text x=\"{Width / 2}\" y=\"{Height / 2}\" text-anchor=\"middle\">no loss was logged</text>\n"));
        svg.Append("</svg>");
        var name = WebUtility.HtmlEncode(title);
        return $"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{name}: loss</title></head>\n<body>\n<h3 style=\"font-family:sans-serif\">{name}</h3>\n{svg}\n</body></html>\n";
    }

    /// <summary>About five round tick values (1, 2 or 5 × 10^k apart) covering [min, max].</summary>
    static List<double> Ticks(double min, double max)
    {
        if (max <= min) { max = min + (min == 0 ? 1 : Math.Abs(min) * 0.1); min -= (max - min); }
        double raw = (max - min) / 5, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1.0, 2, 5, 10 }.Select(m => m * magnitude).First(s => s >= raw);
        var ticks = new List<double>();
        for (double t = Math.Floor(min / step) * step; t < max + step * 0.999; t += step) ticks.Add(Math.Round(t / step) * step);
        return ticks;
    }

    static string Inv(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
