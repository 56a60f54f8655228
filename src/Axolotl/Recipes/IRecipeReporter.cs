using Axolotl.Training;

namespace Axolotl.Recipes;

/// <summary>What a run reports as it prepares, for the CLI to show.</summary>
internal interface IRecipeReporter : ITrainingObserver
{
    void Info(string message) { }
    void Warn(string message) { }
    /// <summary>Rows tokenized so far (for a progress bar).</summary>
    void OnTokenizing(int rowsDone) { }
    void ITrainingObserver.OnNotice(string message) => Info(message);
}
