using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Axolotl.Config;

/// <summary>
/// One entry of <c>unfrozen_parameters</c>, read as Axolotl's LayerNamePattern reads it (utils/freeze.py): an optional
/// trailing row range <c>[i]</c>, <c>[start:end]</c>, <c>[:end]</c> or <c>[start:]</c> (not part of the regex); every
/// '.' not followed by '+' made a literal dot; and the regex tried with Python's <c>re.match</c>, i.e. anchored at the
/// start of the parameter name only (add '$' to match a whole name).
/// </summary>
internal sealed record UnfrozenPattern(string Raw, Regex NameRegex, int? RangeStart, int? RangeEnd)
{
    /// <summary>Whether a row range was given (then only those rows of the first dimension train).</summary>
    public bool HasRange => RangeStart is not null;

    public bool Matches(string parameterName) => NameRegex.IsMatch(parameterName);

    public static UnfrozenPattern Parse(string pattern)
    {
        string name = pattern;
        int? start = null, end = null;
        var range = Regex.Match(pattern, @"^(.+)\[([0-9]*)(?::([0-9]*))?\]$", RegexOptions.Singleline);
        if (range.Success)
        {
            name = range.Groups[1].Value;
            string startText = range.Groups[2].Value;
            bool hasColon = range.Groups[3].Success;
            if (!hasColon && startText.Length > 0)
            {
                start = int.Parse(startText, System.Globalization.CultureInfo.InvariantCulture);
                end = start + 1;
            }
            else
            {
                start = startText.Length > 0 ? int.Parse(startText, System.Globalization.CultureInfo.InvariantCulture) : 0;
                end = hasColon && range.Groups[3].Value.Length > 0 ? int.Parse(range.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture) : null;
                if (end is int e && start >= e)
                    throw new UserError($"unfrozen_parameters: '{pattern}' has an empty range; its end must be greater than its start.");
            }
        }
        // Axolotl's re.sub(r"\.(?!\+)", "\\.", ...): dots are literal unless they start a ".+".
        var escaped = Regex.Replace(name, @"\.(?!\+)", @"\.");
        try
        {
            // \G(?:...) is re.match: the match must start at the first character, nothing is said about the end.
            return new UnfrozenPattern(pattern, new Regex(@"\G(?:" + escaped + ")", RegexOptions.CultureInvariant), start, end);
        }
        catch (ArgumentException e)
        {
            throw new UserError($"unfrozen_parameters: '{pattern}' is not a valid regular expression ({e.Message}).");
        }
    }
}

/// <summary>Checks of unfrozen_parameters, lisa_* and peft (LoftQ) that need no model.</summary>
static class PartialTrainingKeys
{
    public static void Check(AxolotlConfig c, Action<string, string> fail)
    {
        if (c.UnfrozenParameters is { Count: > 0 } patterns)
        {
            if (c.Adapter != null)
                fail("unfrozen_parameters", "unfrozen_parameters chooses what a full fine-tune trains; with an adapter it would freeze the adapter's own weights (Axolotl matches PEFT's base_model.model. names). Remove it or the adapter.");
            foreach (var p in patterns)
            {
                try { UnfrozenPattern.Parse(p); }
                catch (UserError e) { fail("unfrozen_parameters", e.Message); }
            }
        }
        if (c.LisaNLayers is not null || c.LisaStepInterval is not null)
        {
            if (c.LisaNLayers is <= 0) fail("lisa_n_layers", "lisa_n_layers must be a positive number of layers.");
            if (c.LisaStepInterval is <= 0) fail("lisa_step_interval", "lisa_step_interval must be a positive number of steps.");
            if (c.LisaNLayers is not null && c.LisaStepInterval is not null)
            {
                if (c.Adapter != null)
                    fail("lisa_n_layers", "LISA (lisa_n_layers) switches which layers of a full fine-tune train; it does not combine with an adapter. Remove the adapter or the lisa_* keys.");
                if (c.UnfrozenParameters is { Count: > 0 })
                    fail("lisa_n_layers", "LISA (lisa_n_layers) unfreezes whole layers and would override unfrozen_parameters; set only one of them.");
            }
        }
        if (c.Peft is { } peft) CheckPeft(c, peft, fail);
    }

    /// <summary>Axolotl's PeftConfig: only loftq_config, whose only key is loftq_bits (4 by default).</summary>
    static void CheckPeft(AxolotlConfig c, JsonObject peft, Action<string, string> fail)
    {
        foreach (var (key, _) in peft)
            if (key != "loftq_config") fail("peft", $"peft.{key} is not a key of Axolotl's peft block (it has loftq_config).");
        if (peft["loftq_config"] is not JsonObject loftq) return;
        foreach (var (key, _) in loftq)
            if (key != "loftq_bits") fail("peft", $"peft.loftq_config.{key} is not a key Axolotl passes to LoftQ (it has loftq_bits).");
        if (c.LoftqBits is not int bits) return;
        if (bits is not (4 or 8)) fail("peft", $"peft.loftq_config.loftq_bits must be 4 (NF4) or 8 (int8), as PEFT's LoftQ supports; not {bits}.");
        if (!c.HasLora) fail("peft", "peft.loftq_config initialises a LoRA adapter; set adapter: lora (or qlora).");
        if (c.LoadIn8Bit) fail("peft", "peft.loftq_config with load_in_8bit: LoftQ quantizes the full-precision weights itself; load the model unquantized (adapter: lora) or with qlora.");
        if (c.Adapter == AdapterKind.Qlora && bits != 4) fail("peft", "peft.loftq_config.loftq_bits must be 4 with qlora: the residual is taken against the model's own NF4 weights.");
        if (c.LoraModelDir != null) fail("peft", "peft.loftq_config initialises a new adapter; lora_model_dir loads a trained one. Remove one of them.");
    }
}
