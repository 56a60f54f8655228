using Axolotl;

namespace Axolotl.Tests;

/// <summary>
/// The library package's public surface is the AxolotlRuns façade and the types its signatures carry (README, "Use it
/// from .NET code"); everything else is internal so it can change without breaking users. A new public type fails here:
/// make it internal, or add it to the README's list and to this one if a user needs it.
/// </summary>
public class PublicSurfaceTests
{
    [Fact]
    public void Only_the_facade_and_the_types_it_carries_are_public()
    {
        string[] expected =
        [
            "AdapterKind", "AxolotlChatClient", "AxolotlConfig", "AxolotlRuns", "Bf16Mode", "DatasetConfig", "DatasetSummary",
            "EvaluateResult", "FinetuneResult", "GradientCheckpointingMode", "IntervalStrategy", "RlMethod", "RunCanceledException",
            "TrainerState", "TrainingProgress", "TrainingProgressKind", "TrainOnEnd", "UserDefinedFormat", "UserError",
        ];
        var exported = typeof(AxolotlRuns).Assembly.GetExportedTypes().Select(t => t.Name).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(expected.Order(StringComparer.Ordinal), exported);
    }
}
