namespace Axolotl.Config;

/// <summary>
/// The dataset <c>type:</c> names Axolotl.NET implements: the config layer refuses the others by name before any data
/// is read, and Data's prompt-strategy registry builds a strategy for each (a test keeps the two in step).
/// </summary>
internal static class DatasetTypes
{
    /// <summary>Axolotl's prompt styles, after a colon (alpaca:chatml).</summary>
    public static readonly IReadOnlySet<string> Styles = new HashSet<string> { "instruct", "chat", "chatml", "phi" };

    /// <summary>Axolotl's types that take a prompt style after a colon.</summary>
    public static readonly IReadOnlySet<string> StyledTypes = new HashSet<string> { "alpaca", "explainchoice", "concisechoice", "summarizetldr", "jeopardy", "oasst", "gpteacher", "reflection" };

    /// <summary>Types named by module (and loader function) in Axolotl's prompt_strategies.</summary>
    public static readonly IReadOnlySet<string> ModuleTypes = new HashSet<string>
    {
        "alpaca_chat", "alpaca_chat.load", "alpaca_chat.load_concise", "alpaca_chat.load_qa", "alpaca_chat.load_camel_ai", "alpaca_chat.load_no_prompt",
        "alpaca_instruct", "alpaca_instruct.load", "alpaca_instruct.load_no_prompt",
        "alpaca_w_system", "alpaca_w_system.load", "alpaca_w_system.load_chat", "alpaca_w_system.load_instruct",
        "alpaca_w_system.load_open_orca", "alpaca_w_system.load_open_orca_chatml",
        "context_qa", "context_qa.load", "context_qa.load_404", "context_qa.load_v2",
        "metharme", "metharme.load", "input_output", "input_output.load", "completion", "completion.load",
        "chat_template", "chat_template.load", "llama2_chat", "llama2_chat.load",
        Reward.Stepwise, Reward.Stepwise + ".load",
    };

    public static bool IsImplemented(string type)
    {
        var parts = type.Split(':', 2);
        if (parts.Length == 2) return StyledTypes.Contains(parts[0]) && Styles.Contains(parts[1]);
        return StyledTypes.Contains(type) || ModuleTypes.Contains(type);
    }

    /// <summary>The preference dataset types (rl: dpo, ipo, simpo, orpo, kto) by Axolotl's module.name.</summary>
    public static class Preference
    {
        static readonly string[] DpoTextTypes = ["default", "argilla_chat", "icr", "intel", "prompt_pairs", "ultra"];
        static readonly string[] KtoTextTypes = ["argilla", "argilla_chat", "intel", "prompt_pairs", "ultra"];

        public static readonly IReadOnlyList<string> Dpo =
        [
            .. DpoTextTypes.Select(t => "chatml." + t), .. DpoTextTypes.Select(t => "llama3." + t),
            "chat_template.default", "chat_template.argilla_chat", "zephyr.nectar", "user_defined.default", "passthrough.default",
        ];

        public static readonly IReadOnlyList<string> Kto =
            [.. KtoTextTypes.Select(t => "chatml." + t), .. KtoTextTypes.Select(t => "llama3." + t), "user_defined.default"];

        public static readonly IReadOnlyList<string> Orpo = ["chat_template.argilla"];

        /// <summary>Whether <paramref name="type"/> is one of the preference types of any method.</summary>
        public static bool IsKnown(string type) => Dpo.Concat(Kto).Concat(Orpo).Contains(Canonical(type));

        /// <summary>The type's full name: "chatml" is "chatml.default"; a mapping (user-defined) is "user_defined.default".</summary>
        public static string Canonical(string? type) => type is null or "" ? "passthrough.default" : type.Contains('.') ? type : type + ".default";

        /// <summary>The types an <c>rl:</c> method reads: KTO's and ORPO's own, the DPO set for dpo, ipo and simpo.</summary>
        public static IReadOnlyList<string> For(RlMethod rl) => rl switch { RlMethod.Kto => Kto, RlMethod.Orpo => Orpo, _ => Dpo };
    }

    /// <summary>
    /// The reward-model types: Axolotl's bradley_terry.* (chosen/rejected pairs scored by a sequence classifier, for
    /// reward_model: true) and stepwise_supervised (per-step labels for a token classifier, process_reward_model: true).
    /// </summary>
    public static class Reward
    {
        public const string Stepwise = "stepwise_supervised";
        public static readonly IReadOnlyList<string> BradleyTerry = ["bradley_terry.chat_template", "bradley_terry.chat_template.load"];

        public static bool IsBradleyTerry(string? type) => type != null && BradleyTerry.Contains(type);
        public static bool IsKnown(string? type) => IsBradleyTerry(type) || type is Stepwise or Stepwise + ".load";
    }
}
