// Fine-tunes the quickstart (examples/quickstart.yml) from C#, as `axolotl train` does; Ctrl-C stops after the
// current step with a checkpoint saved. Run from the repository root:
//   dotnet run --project examples/FineTuneQuickstart -c Release
using Axolotl;

using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
var progress = new Progress<TrainingProgress>(p =>
{
    if (p.Kind == TrainingProgressKind.Logged && p.Log?["loss"] is not null) Console.WriteLine($"step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}");
});
var result = await AxolotlRuns.TrainAsync("examples/quickstart.yml", progress, stop.Token);
Console.WriteLine($"LoRA adapter saved in {result.OutputDir}");
