using System.Text.Json.Nodes;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Tokenization;
using static TorchSharp.torch;

namespace Axolotl.Training.Trackers;

/// <summary>What <see cref="EvalSamplesCallback"/> does at each evaluation.</summary>
internal sealed record EvalSamplesOptions
{
    /// <summary>eval_table_size: rows of the table (0: no table). Whole eval batches are taken until more than this many
    /// rows are in, as Axolotl's LogPredictionCallback checks the count before each batch.</summary>
    public int TableSize { get; init; }
    /// <summary>eval_batch_size: rows per eval batch, which decides where the table stops.</summary>
    public int BatchSize { get; init; } = 1;
    /// <summary>eval_max_new_tokens: greedy tokens per completion, and perplexity's window.</summary>
    public int MaxNewTokens { get; init; } = 128;
    /// <summary>do_causal_lm_eval with perplexity among eval_causal_lm_metrics.</summary>
    public bool Perplexity { get; init; }
}

/// <summary>
/// Axolotl's evaluation-time generation callbacks, without W&B:
/// <list type="bullet">
/// <item>LogPredictionCallback (eval_table_size): for each eval row, the prompt (tokens with label -100 that are not
/// padding), the correct completion (tokens with a label), the greedy completion of model.generate on the decoded and
/// re-tokenized prompt (eval_max_new_tokens, cut after as many tokens as the prompt had), and the argmax of the row's
/// own logits at the labelled positions (trainer.prediction_step, unshifted as Axolotl takes it). Rows go to
/// <c>eval_samples.jsonl</c> (one JSON line per row, with the step) and TensorBoard's text plugin (tag
/// "Eval - Predictions vs Ground Truth").</item>
/// <item>CausalLMBenchEvalCallback (do_causal_lm_eval, perplexity): the completions of all eval rows, decoded, re-tokenized
/// with the special tokens and right-padded with the pad token into one batch; the loss of windows of
/// eval_max_new_tokens tokens starting every 512 (labels before the window's new tokens masked, padding not: Axolotl's
/// Perplexity passes no attention mask); eval_perplexity = exp(mean window loss), logged as its own entry.</item>
/// </list>
/// </summary>
internal sealed class EvalSamplesCallback(IReadOnlyList<Example> eval, Tokenizer tokenizer, EvalSamplesOptions options, string outputDir,
                                        TensorBoardWriter? tensorBoard = null) : ITrainerCallback
{
    public const string FileName = "eval_samples.jsonl";
    public const string TableTag = "Eval - Predictions vs Ground Truth";
    /// <summary>Axolotl's Perplexity stride.</summary>
    const int Stride = 512;
    static readonly string[] Columns = ["id", "Prompt", "Correct Completion", "Predicted Completion (model.generate)", "Predicted Completion (trainer.prediction_step)"];

    int PadId => tokenizer.PadTokenId ?? tokenizer.EosTokenId ?? 0;

    /// <summary>A resumed run keeps the rows of evaluations up to its checkpoint and drops the later ones.</summary>
    public void OnTrainBegin(TrainerContext c)
    {
        var path = Path.Combine(outputDir, FileName);
        if (!File.Exists(path)) return;
        var kept = File.ReadAllLines(path).Where(l => l.Length > 0 && (int)JsonNode.Parse(l)!["step"]! <= c.Step);
        AtomicFile.WriteAllText(path, string.Concat(kept.Select(l => l + "\n")));
    }

    public void OnEvaluate(TrainerContext c, JsonObject metrics)
    {
        if (eval.Count == 0) return;
        if (options.TableSize > 0) WriteTable(c.Model, c.Step);
        if (options.Perplexity && c.Log is { } log)
            log(new JsonObject { ["eval_perplexity"] = Perplexity(c.Model), ["epoch"] = Math.Round(c.State.Epoch, 6), ["step"] = c.Step });
    }

    /// <summary>The prompt tokens of a row: unlabelled and not padding.</summary>
    public int[] PromptIds(Example e) => e.InputIds.Where((id, i) => e.Labels[i] == Example.IgnoreIndex && id != PadId).ToArray();
    /// <summary>The completion tokens of a row: those with a label.</summary>
    public static int[] CompletionIds(Example e) => e.InputIds.Where((_, i) => e.Labels[i] != Example.IgnoreIndex).ToArray();

    /// <summary>The table's rows as Axolotl builds them: whole eval batches until more than TableSize rows are in.</summary>
    public List<JsonObject> Table(CausalLM model)
    {
        var rows = new List<JsonObject>();
        var generation = new GenerationOptions
        {
            MaxNewTokens = options.MaxNewTokens, DoSample = false,
            EosTokenIds = tokenizer.EosTokenId is int eos ? [eos] : [],
        };
        bool training = model.training;
        model.eval();
        try
        {
            foreach (var batch in eval.Chunk(Math.Max(1, options.BatchSize)))
            {
                if (rows.Count > options.TableSize) break;
                foreach (var e in batch)
                {
                    var prompt = PromptIds(e);
                    var promptText = tokenizer.Decode(prompt, skipSpecialTokens: true);
                    var completion = tokenizer.Decode(CompletionIds(e), skipSpecialTokens: true);
                    // model.generate runs on the decoded prompt tokenized again; the sequence is cut after the original prompt's length.
                    var encoded = tokenizer.Encode(promptText, addSpecialTokens: true);
                    var generated = encoded.Count == 0 ? [] : Generation.Generate(model, encoded, generation);
                    var predicted = tokenizer.Decode(encoded.Concat(generated).Skip(prompt.Length), skipSpecialTokens: true);
                    rows.Add(new JsonObject
                    {
                        [Columns[0]] = rows.Count, [Columns[1]] = promptText, [Columns[2]] = completion,
                        [Columns[3]] = predicted, [Columns[4]] = tokenizer.Decode(PredictionStepIds(model, e), skipSpecialTokens: true),
                    });
                }
            }
        }
        finally { if (training) model.train(); }
        return rows;
    }

    /// <summary>argmax of the row's logits at the positions that have a label (not shifted: as Axolotl reads them).</summary>
    static int[] PredictionStepIds(CausalLM model, Example e)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(e.InputIds.Select(i => (long)i).ToArray(), device: model.Device).unsqueeze(0);
        var argmax = model.forward(ids).argmax(-1).squeeze(0).cpu().data<long>().ToArray();
        return argmax.Where((_, i) => e.Labels[i] != Example.IgnoreIndex).Select(x => (int)x).ToArray();
    }

    void WriteTable(CausalLM model, int step)
    {
        var rows = Table(model);
        var path = Path.Combine(outputDir, FileName);
        var before = File.Exists(path) ? File.ReadAllText(path) : "";
        AtomicFile.WriteAllText(path, before + string.Concat(rows.Select(r =>
        {
            var line = new JsonObject { ["step"] = step };
            foreach (var (k, v) in r) line[k] = v?.DeepClone();
            return line.ToJsonString() + "\n";
        })));
        if (tensorBoard is null) return;
        var cells = new string[rows.Count + 1, Columns.Length];
        for (int j = 0; j < Columns.Length; j++) cells[0, j] = Columns[j];
        for (int i = 0; i < rows.Count; i++)
            for (int j = 0; j < Columns.Length; j++) cells[i + 1, j] = rows[i][Columns[j]]!.ToString();
        tensorBoard.WriteText(TableTag, step, cells);
    }

    /// <summary>Axolotl's Perplexity metric over the eval rows' completions (see the class summary).</summary>
    public double Perplexity(CausalLM model)
    {
        var references = eval.Select(e => tokenizer.Encode(tokenizer.Decode(CompletionIds(e), skipSpecialTokens: true), addSpecialTokens: true)).ToList();
        int length = references.Max(r => r.Count);
        if (length == 0) return double.NaN;
        var padded = new long[references.Count * length];
        Array.Fill(padded, PadId);
        for (int r = 0; r < references.Count; r++)
            for (int t = 0; t < references[r].Count; t++) padded[r * length + t] = references[r][t];
        bool training = model.training;
        model.eval();
        var losses = new List<double>();
        try
        {
            using var _ = no_grad();
            using var all = tensor(padded, device: model.Device).reshape(references.Count, length);
            int previousEnd = 0;
            for (int begin = 0; begin < length; begin += Stride)
            {
                using var scope = NewDisposeScope();
                int end = Math.Min(begin + options.MaxNewTokens, length), target = end - previousEnd;
                var ids = all.narrow(1, begin, end - begin);
                var labels = ids.clone();
                // labels[:, :-target] = -100: everything before the window's last `target` tokens (nothing if target covers it).
                if (target < end - begin) labels.narrow(1, 0, end - begin - target).fill_(Example.IgnoreIndex);
                var (sum, tokens) = model.LossSum(ids, labels);
                losses.Add(sum.item<float>() / Math.Max(1, tokens));
                previousEnd = end;
                if (end == length) break;
            }
        }
        finally { if (training) model.train(); }
        return Math.Exp(losses.Average());
    }
}
