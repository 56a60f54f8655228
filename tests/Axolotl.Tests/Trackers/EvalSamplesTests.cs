using System.Text;
using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Tests.Training;
using Axolotl.Training.Trackers;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Axolotl.Tests.Trackers;

/// <summary>eval_table_size / eval_max_new_tokens / do_causal_lm_eval: the table's rows and perplexity, re-derived here.</summary>
[Collection(GlobalTorchRng.Name)]
public class EvalSamplesTests
{
    [Fact]
    public void Each_evaluation_writes_the_prediction_table_and_logs_the_perplexity_of_the_completions()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["c.yml"], TrackerData.Yaml(dir, """
            eval_batch_size: 3
            eval_table_size: 2
            eval_max_new_tokens: 6
            do_causal_lm_eval: true
            eval_causal_lm_metrics: [perplexity]
            use_tensorboard: true
            save_strategy: "no"
            """));
        Assert.Equal(0, Cli.Cli.Run(["train", dir["c.yml"]]));

        var config = ConfigLoader.Load(dir["c.yml"]);
        var tokenizer = Recipes.ModelLoading.LoadTokenizer(config)!;
        var held = DatasetBuilder.Build(config, () => tokenizer).Eval;
        Assert.Equal(4, held.Count);
        int pad = tokenizer.PadTokenId ?? tokenizer.EosTokenId ?? 0;

        // Axolotl's loop checks "more than eval_table_size rows?" before each batch: after the first batch of 3 rows it is
        // (3 > 2), so the table holds that whole batch, at each of the two evaluations.
        var lines = File.ReadAllLines(dir["out/eval_samples.jsonl"]).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.Equal([2, 2, 2, 4, 4, 4], lines.Select(l => (int)l["step"]!));
        Assert.Equal([0, 1, 2, 0, 1, 2], lines.Select(l => (int)l["id"]!));

        // The last evaluation ran on the final weights: regenerate its rows here, greedily, without a KV cache.
        var model = CausalLM.FromPretrained(dir["out"], ScalarType.Float32, ScalarType.Float32);
        model.eval();
        using var _ = no_grad();
        int eos = tokenizer.EosTokenId!.Value;
        for (int r = 0; r < 3; r++)
        {
            var row = lines[3 + r];
            var e = held[r];
            var prompt = e.InputIds.Where((id, i) => e.Labels[i] == Example.IgnoreIndex && id != pad).ToArray();
            var completion = e.InputIds.Where((_, i) => e.Labels[i] != Example.IgnoreIndex).ToArray();
            var promptText = tokenizer.Decode(prompt, skipSpecialTokens: true);
            Assert.Equal(promptText, (string)row["Prompt"]!);
            Assert.Contains("### Response:", promptText);
            Assert.Equal(tokenizer.Decode(completion, skipSpecialTokens: true), (string)row["Correct Completion"]!);

            var sequence = tokenizer.Encode(promptText).ToList();
            int start = sequence.Count;
            for (int t = 0; t < 6; t++)
            {
                var logits = model.forward(tensor(sequence.Select(x => (long)x).ToArray()).unsqueeze(0));
                int next = (int)logits[0, -1].argmax().item<long>();
                sequence.Add(next);
                if (next == eos) break;
            }
            Assert.Equal(tokenizer.Decode(sequence.Skip(prompt.Length), skipSpecialTokens: true), (string)row["Predicted Completion (model.generate)"]!);

            var all = model.forward(tensor(e.InputIds.Select(x => (long)x).ToArray()).unsqueeze(0))[0].argmax(-1).data<long>().ToArray();
            var stepIds = all.Where((_, i) => e.Labels[i] != Example.IgnoreIndex).Select(x => (int)x);
            Assert.Equal(tokenizer.Decode(stepIds, skipSpecialTokens: true), (string)row["Predicted Completion (trainer.prediction_step)"]!);
        }

        // Perplexity: the completions decoded, tokenized again and right-padded into one batch. Windows start every 512
        // tokens, so these short rows have one: their first eval_max_new_tokens (6) tokens, every label kept (padding too,
        // as Axolotl passes no mask): exp(mean next-token NLL over the batch).
        var references = held.Select(e => tokenizer.Encode(tokenizer.Decode(e.InputIds.Where((_, i) => e.Labels[i] != Example.IgnoreIndex), skipSpecialTokens: true)).ToArray()).ToList();
        int length = references.Max(r => r.Length), window = Math.Min(6, length);
        Assert.True(length < 512);
        double nll = 0; int count = 0;
        foreach (var reference in references)
        {
            var ids = reference.Concat(Enumerable.Repeat(pad, length - reference.Length)).Take(window).Select(x => (long)x).ToArray();
            var logProbs = F.log_softmax(model.forward(tensor(ids).unsqueeze(0))[0], -1);
            for (int t = 0; t + 1 < window; t++) { nll -= logProbs[t, ids[t + 1]].item<float>(); count++; }
        }
        double expected = Math.Exp(nll / count);
        var logged = TrackerData.History(dir).Where(h => h!["eval_perplexity"] != null && h!["eval_loss"] == null).ToList();
        Assert.Equal([2, 4], logged.Select(h => (int)h!["step"]!));
        double perplexity = (double)logged[^1]!["eval_perplexity"]!;
        Assert.True(Math.Abs(perplexity - expected) < 1e-4 * expected, $"eval_perplexity {perplexity} vs re-derived {expected}");

        // TensorBoard: a text-plugin summary per evaluation, a [4 × 5] string table (header + 3 rows).
        var events = Directory.GetFiles(dir["out/runs"], "events.out.tfevents.*", SearchOption.AllDirectories).Single();
        var texts = TensorBoardTests.Records(File.ReadAllBytes(events)).Select(TextTable).Where(t => t != null).ToList();
        Assert.Equal(2, texts.Count);
        Assert.Equal((4L, 5L), (texts[1]!.Value.Rows, texts[1]!.Value.Columns));
        Assert.Equal("Prompt", texts[1]!.Value.Cells[1]);
        Assert.Equal((string)lines[3]["Prompt"]!, texts[1]!.Value.Cells[5 + 1]);
    }

    /// <summary>The text-plugin value of an event: tag, plugin name "text", and the string tensor's shape and cells.</summary>
    static (long Rows, long Columns, List<string> Cells)? TextTable(byte[] record)
    {
        foreach (var summary in TensorBoardTests.Fields(record).Where(f => f.Field == 5))
            foreach (var value in TensorBoardTests.Fields(summary.Bytes).Where(f => f.Field == 1))
            {
                var parts = TensorBoardTests.Fields(value.Bytes).ToList();
                if (Encoding.UTF8.GetString(parts.Single(p => p.Field == 1).Bytes) != EvalSamplesCallback.TableTag) continue;
                var plugin = TensorBoardTests.Fields(TensorBoardTests.Fields(parts.Single(p => p.Field == 9).Bytes).Single().Bytes).Single(p => p.Field == 1);
                Assert.Equal("text", Encoding.UTF8.GetString(plugin.Bytes));
                var tensorFields = TensorBoardTests.Fields(parts.Single(p => p.Field == 8).Bytes).ToList();
                Assert.Equal(7UL, tensorFields.Single(f => f.Field == 1).Number); // DT_STRING
                var dims = TensorBoardTests.Fields(tensorFields.Single(f => f.Field == 2).Bytes)
                    .Select(d => (long)TensorBoardTests.Fields(d.Bytes).Single(x => x.Field == 1).Number).ToList();
                return (dims[0], dims[1], tensorFields.Where(f => f.Field == 8).Select(f => Encoding.UTF8.GetString(f.Bytes)).ToList());
            }
        return null;
    }

    [Fact]
    public void Axolotl_rejects_a_table_with_packed_evaluation_and_unknown_metrics()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllText(dir["a.yml"], TrackerData.Yaml(dir, "sample_packing: true\neval_table_size: 2"));
        Assert.Contains("set eval_sample_packing: false", Assert.Throws<UserError>(() => ConfigLoader.Load(dir["a.yml"])).Message);
        File.WriteAllText(dir["b.yml"], TrackerData.Yaml(dir, "do_causal_lm_eval: true\neval_causal_lm_metrics: [bleu]"));
        Assert.Contains("'bleu' is not", Assert.Throws<UserError>(() => ConfigLoader.Load(dir["b.yml"])).Message);
        File.WriteAllText(dir["c.yml"], TrackerData.Yaml(dir, "do_causal_lm_eval: true"));
        var warning = Assert.Single(ConfigLoader.Load(dir["c.yml"]).Warnings, w => w.Contains("not computed"));
        Assert.Contains("sacrebleu, comet, ter, chrf are not computed", warning);
    }

    [Fact]
    public void The_phi3_example_with_its_eval_table_and_perplexity_loads()
    {
        var c = ConfigLoader.Load(TestSetup.Data("axolotl-configs", "phi__phi3-ft.yml"));
        Assert.Equal((2, 32, true, false), (c.EvalTableSize, c.EvalMaxNewTokens, c.DoCausalLmEval, c.EvalSamplePacking));
        Assert.Equal(["perplexity"], c.EvalCausalLmMetrics);
    }
}
