using System.Text.Json.Nodes;
using Axolotl.IO;

namespace Axolotl.Training;

/// <summary>
/// <c>metrics.jsonl</c> in output_dir: every log_history entry as one JSON line, appended and flushed as it is logged,
/// so a run that dies still leaves its metrics. Wraps the run's observer and passes every call on.
/// </summary>
internal sealed class MetricsLog : ITrainingObserver, IDisposable
{
    public const string FileName = "metrics.jsonl";
    readonly ITrainingObserver _inner;
    readonly StreamWriter _writer;

    /// <param name="history">The log history the run starts from (a resumed checkpoint's, or none): the file is rewritten
    /// to exactly these lines first, so a resume neither duplicates nor keeps lines logged after that checkpoint.</param>
    public MetricsLog(string outputDir, IEnumerable<JsonObject> history, ITrainingObserver inner)
    {
        _inner = inner;
        Path = System.IO.Path.Combine(outputDir, FileName);
        AtomicFile.WriteAllText(Path, string.Concat(history.Select(e => e.ToJsonString() + "\n")));
        _writer = new StreamWriter(new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read));
    }

    public string Path { get; }

    /// <summary>Also receives every entry (use_tensorboard).</summary>
    public TensorBoardWriter? TensorBoard { get; init; }

    /// <summary>Records an entry that the trainer adds without reporting it (the final summary).</summary>
    public void Append(JsonObject entry)
    {
        _writer.Write(entry.ToJsonString() + "\n");
        _writer.Flush();
        TensorBoard?.Write(entry);
    }

    public void OnStart(TrainingPlan plan) => _inner.OnStart(plan);
    public void OnStep(int step, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) =>
        _inner.OnStep(step, loss, learningRate, tokensPerSecond, elapsed);
    public void OnLog(JsonObject entry) { Append(entry); _inner.OnLog(entry); }
    public void OnNotice(string message) => _inner.OnNotice(message);

    public void Dispose()
    {
        _writer.Dispose();
        TensorBoard?.Dispose();
    }
}
