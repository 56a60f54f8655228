// TEMPORARY: the shapes of the lead's seam (issue 16) until it lands on main; deleted at the merge.
namespace Axolotl.Training;

public sealed record ObjectiveOutput(double LossSum, IReadOnlyDictionary<string, double>? MetricSums = null);

public interface ITrainingObjective
{
    long Units(Data.Batch batch);
    ObjectiveOutput ForwardBackward(Data.Batch batch, double scale);
    ObjectiveOutput Forward(Data.Batch batch);
}

public interface IBatchSource
{
    int BatchesPerEpoch { get; }
    int Examples { get; }
    double MeanRowTokens { get; }
    double? PackingEfficiency => null;
    IReadOnlyList<Data.Batch> Epoch(int epoch, int firstBatch = 0);
}
