using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.IO;
using Axolotl.Models;
using Axolotl.Recipes;
using Axolotl.Tokenization;
using Axolotl.Training.Objectives;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>
/// Reward models (TRL's RewardTrainer) and process reward models (TRL's PRMTrainer): the losses and metrics against
/// hand-computed numbers, the head's reading position against transformers' rule, the dataset types against Axolotl's
/// tokenization, and short <c>axolotl train</c> runs with the files transformers and PEFT would write.
/// </summary>
[Collection(GlobalTorchRng.Name)]
public class RewardModelTests
{
    sealed class Quiet : IRecipeReporter;

    static string RepoRoot()
    {
        var dir = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(dir, "Axolotl.sln"))) dir = Path.GetDirectoryName(dir)!;
        return dir;
    }

    static string Quickstart => Path.Combine(RepoRoot(), "examples", "models", "tiny-llama-text");

    [Fact]
    public void Bradley_terry_loss_and_metrics_match_hand_computed_values()
    {
        using var scope = NewDisposeScope();
        var chosen = tensor(new[] { 1.0f, -0.5f, 0.2f });
        var rejected = tensor(new[] { 0.0f, 0.5f, 0.2f });
        var (loss, metrics) = BradleyTerryObjective.PairLoss(chosen, rejected, null);
        // -log σ(1) - log σ(-1) - log σ(0) = ln(1 + e^-1) + ln(1 + e) + ln 2
        Assert.Equal(0.31326169 + 1.31326169 + 0.69314718, loss.item<float>(), 5);
        Assert.Equal(1, metrics["accuracy"]);          // only the first pair scores chosen above rejected; a tie is not
        Assert.Equal(0, metrics["margin"], 6);         // 1 − 1 + 0
        Assert.Equal(1.4 / 6, metrics["mean_reward"] / 3, 6);
        Assert.Equal(-0.5, metrics["min_reward"] / 3, 6);
        Assert.Equal(1.0, metrics["max_reward"] / 3, 6);

        // center_rewards_coefficient adds coef × Σ (r_c + r_r)²: 0.01 × (1 + 0 + 0.16).
        var (centered, _) = BradleyTerryObjective.PairLoss(chosen, rejected, 0.01);
        Assert.Equal(loss.item<float>() + 0.0116, centered.item<float>(), 5);
    }

    /// <summary>transformers' rule, written out: the rightmost token that is not the pad token; position 0 when there is none.</summary>
    static long RightmostNonPad(long[] row, long pad)
    {
        for (int t = row.Length - 1; t >= 0; t--) if (row[t] != pad) return t;
        return 0;
    }

    [Fact]
    public void The_score_is_read_at_the_rightmost_non_pad_token()
    {
        long[][] rows = [[5, 6, 7, 2, 2, 2], [5, 2, 7, 8, 2, 2], [2, 2, 9, 10, 11, 12], [2, 2, 2, 2, 2, 2], [3, 4, 5, 6, 7, 8]];
        using var scope = NewDisposeScope();
        var ids = tensor(rows.SelectMany(r => r).ToArray(), [rows.Length, 6]);
        var positions = ClassifierHead.LastNonPadPositions(ids, 2).data<long>().ToArray();
        Assert.Equal(rows.Select(r => RightmostNonPad(r, 2)), positions);
        Assert.Equal(new long[] { 2, 3, 5, 0, 5 }, positions);

        // The reward is the score head at that token: the same as the head over every token, read there.
        var architecture = ClassifierHead.Attach(DecoderConfig.FromFolder(TestSetup.Data("reference", "models", "tiny-llama")), ClassifierKind.Sequence, 1, 2);
        manual_seed(3);
        var model = CausalLM.Create(architecture, ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(TestSetup.Data("reference", "models", "tiny-llama"));
        model.eval();
        using var _ = no_grad();
        var rewards = BradleyTerryObjective.Rewards(model, ids, 2).data<float>().ToArray();
        var perToken = model.forward(ids);
        for (int r = 0; r < rows.Length; r++)
            Assert.Equal(perToken[r, RightmostNonPad(rows[r], 2), 0].item<float>(), rewards[r], 6);
        Assert.Equal([1L, 64L], model.score!.weight.shape);
        Assert.Null(model.score.bias);   // transformers' sequence classifier has no bias
        Assert.Null(model.lm_head);
    }

    [Fact]
    public void A_causal_checkpoint_loads_as_a_classifier_with_a_fresh_seeded_head()
    {
        var folder = TestSetup.Data("reference", "models", "tiny-llama");
        var architecture = ClassifierHead.Attach(DecoderConfig.FromFolder(folder), ClassifierKind.Token, 2);
        CausalLM Load(long seed)
        {
            manual_seed(seed);
            var m = CausalLM.Create(architecture, ScalarType.Float32, ScalarType.Float32);
            m.LoadWeights(folder);
            return m;
        }
        var a = Load(7);
        var b = Load(7);
        Assert.True(a.score!.weight.allclose(b.score!.weight, 0, 0));
        Assert.True(a.score.bias!.eq(0).all().item<bool>());
        // normal(0, initializer_range 0.02): 128 draws have a standard deviation near 0.02.
        Assert.InRange(a.score.weight.std().item<float>(), 0.012, 0.028);
        Assert.Equal("LlamaForTokenClassification", architecture.Raw["architectures"]![0]!.GetValue<string>());
        Assert.Equal("LABEL_1", architecture.Raw["id2label"]!["1"]!.GetValue<string>());
        Assert.Equal(1, architecture.Raw["label2id"]!["LABEL_1"]!.GetValue<int>());
    }

    [Fact]
    public void Process_reward_loss_is_the_cross_entropy_at_labelled_positions_and_accuracy_counts_argmax_hits()
    {
        var folder = TestSetup.Data("reference", "models", "tiny-llama");
        var architecture = ClassifierHead.Attach(DecoderConfig.FromFolder(folder), ClassifierKind.Token, 2);
        manual_seed(5);
        var model = CausalLM.Create(architecture, ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(folder);
        model.eval();
        int[] ids0 = [1, 5, 9, 200, 17, 3], ids1 = [1, 40, 41, 42];
        int[] labels0 = [-100, -100, 1, -100, -100, 0], labels1 = [-100, -100, -100, 1];
        var batch = Batch.Pad([new Example(ids0, labels0), new Example(ids1, labels1)], 0, null);
        var objective = new ProcessRewardObjective(model);
        Assert.Equal(3, objective.Units(batch));
        using var _ = no_grad();
        var output = objective.Forward(batch);
        // By hand from the head over every token: −log softmax(logits)[label] at (0,2), (0,5), (1,3).
        var logits0 = model.forward(tensor(ids0.Select(x => (long)x).ToArray(), [1, ids0.Length]))[0];
        var logits1 = model.forward(tensor(ids1.Select(x => (long)x).ToArray(), [1, ids1.Length]))[0];
        (Tensor Row, int Label)[] points = [(logits0[2], 1), (logits0[5], 0), (logits1[3], 1)];
        double expected = points.Sum(p => -p.Row.log_softmax(0)[p.Label].item<float>());
        int hits = points.Count(p => p.Row.argmax().item<long>() == p.Label);
        Assert.Equal(expected, output.LossSum, 4);
        Assert.Equal(hits, output.MetricSums!["accuracy"]);
    }

    static Tokenizer QuickstartTokenizer() => Tokenizer.FromFolder(Quickstart);

    static Row StepRow(string prompt, string[] completions, bool[] labels) => new(new JsonObject
    {
        ["prompt"] = prompt,
        ["completions"] = new JsonArray(completions.Select(c => (JsonNode)c).ToArray()),
        ["labels"] = new JsonArray(labels.Select(l => (JsonNode)l).ToArray()),
    }, "steps.jsonl", 1, true);

    /// <summary>TRL's PRMTrainer.tokenize_row, written out: BOS + prompt, then each step + separator labelled at its last token.</summary>
    static (int[] Ids, int[] Labels) TrlRow(Tokenizer tok, string prompt, string[] completions, bool[] labels, string separator, bool lastOnly, int? maxCompletion, int maxLength)
    {
        var ids = new List<int> { tok.BosTokenId!.Value };
        ids.AddRange(tok.Encode(prompt, false));
        var lab = Enumerable.Repeat(-100, ids.Count).ToList();
        var completionIds = new List<int>();
        var completionLabels = new List<int>();
        for (int i = 0; i < completions.Length; i++)
        {
            var step = tok.Encode(completions[i], false).Concat(tok.Encode(separator, false)).ToList();
            completionIds.AddRange(step);
            completionLabels.AddRange(Enumerable.Repeat(-100, step.Count - 1));
            completionLabels.Add(lastOnly && i < completions.Length - 1 ? -100 : labels[i] ? 1 : 0);
        }
        if (maxCompletion is int m) { completionIds = completionIds.Take(m).ToList(); completionLabels = completionLabels.Take(m).ToList(); }
        ids.AddRange(completionIds);
        lab.AddRange(completionLabels);
        return (ids.Take(maxLength).ToArray(), lab.Take(maxLength).ToArray());
    }

    [Theory]
    [InlineData(false, null, 256)]
    [InlineData(true, null, 256)]
    [InlineData(false, 9, 256)]
    [InlineData(false, null, 14)]
    public void Stepwise_supervised_labels_each_step_at_its_separator_as_trl_does(bool lastOnly, int? maxCompletion, int sequenceLen)
    {
        var tok = QuickstartTokenizer();
        string prompt = "What is (2 + 3) * 4?";
        string[] steps = ["2 + 3 = 5.", "5 * 4 = 21.", "The answer is 21."];
        bool[] labels = [true, false, false];
        var strategy = new StepwiseSupervised(tok, sequenceLen, "\n", maxCompletion, lastOnly);
        var example = strategy.Tokenize(StepRow(prompt, steps, labels)).Single();
        var (ids, expected) = TrlRow(tok, prompt, steps, labels, "\n", lastOnly, maxCompletion, sequenceLen);
        Assert.Equal(ids, example.InputIds);
        Assert.Equal(expected, example.Labels);
        if (maxCompletion is null && sequenceLen == 256)
        {
            // Every label sits on the separator's last token, and there is one per labelled step.
            var newline = tok.Encode("\n", false)[^1];
            var labelled = Enumerable.Range(0, ids.Length).Where(i => example.Labels[i] != -100).ToList();
            Assert.All(labelled, i => Assert.Equal(newline, example.InputIds[i]));
            Assert.Equal(lastOnly ? [0] : new[] { 1, 0, 0 }, labelled.Select(i => example.Labels[i]));
            Assert.Equal(tok.BosTokenId, example.InputIds[0]);
        }
    }

    [Fact]
    public void Stepwise_rows_with_mismatched_labels_are_bad_rows()
    {
        var strategy = new StepwiseSupervised(QuickstartTokenizer(), 256, "\n", null, false);
        var e = Assert.Throws<BadRowError>(() => strategy.Tokenize(StepRow("q", ["a", "b"], [true])).ToList());
        Assert.Contains("2 completions but 1 labels", e.Message);
    }

    [Fact]
    public void Bradley_terry_rows_tokenize_as_two_chat_template_conversations_cut_to_sequence_len()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["bt.jsonl"], [
            new JsonObject { ["system"] = "Be brief.", ["input"] = "Name a colour.", ["chosen"] = "Blue.", ["rejected"] = "I cannot answer that." }.ToJsonString(),
            new JsonObject { ["input"] = "Say hi.", ["chosen"] = "Hi!", ["rejected"] = new string('x', 900) }.ToJsonString(),
        ]);
        var config = ConfigLoader.Parse($"""
            base_model: {Quickstart}
            reward_model: true
            chat_template: chatml
            datasets:
              - path: {dir["bt.jsonl"]}
                type: bradley_terry.chat_template
            sequence_len: 100
            learning_rate: 0.001
            shuffle_merged_datasets: false
            output_dir: {dir["out"]}
            """, "bt.yml");
        var tok = ModelLoading.LoadTokenizer(config);
        var data = BradleyTerryDataset.Build(config, () => tok);
        Assert.Equal(4, data.Examples.Count);
        int[] Chatml(params (string Role, string Text)[] turns) =>
            tok.Encode(string.Concat(turns.Select(t => $"<|im_start|>{t.Role}\n{t.Text}<|im_end|>\n")), false).ToArray();
        Assert.Equal(Chatml(("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Blue.")), data.Examples[0].InputIds);
        Assert.Equal(Chatml(("system", "Be brief."), ("user", "Name a colour."), ("assistant", "I cannot answer that.")), data.Examples[1].InputIds);
        Assert.Equal(Chatml(("user", "Say hi."), ("assistant", "Hi!")), data.Examples[2].InputIds);
        // Too long for sequence_len: cut to its first 100 tokens, as BTChatTemplateStrategy does.
        Assert.Equal(Chatml(("user", "Say hi."), ("assistant", new string('x', 900)))[..100], data.Examples[3].InputIds);
        Assert.Equal(1, data.Truncated);
        Assert.All(data.Examples, e => Assert.All(e.Labels, l => Assert.Equal(-100, l)));

        // Batches as TRL's DataCollatorForPreference: the chosen rows, then the rejected rows, right-padded.
        var batch = RewardPairBatches.Collate([(data.Examples[0], data.Examples[1]), (data.Examples[2], data.Examples[3])], 2, null);
        Assert.Equal(4, batch.Rows);
        Assert.Equal(100, batch.Length);
        Assert.Equal(data.Examples[2].InputIds, batch.InputIds.Skip(100).Take(data.Examples[2].InputIds.Length).Select(x => (int)x));
        Assert.Equal(data.Examples[1].InputIds, batch.InputIds.Skip(200).Take(data.Examples[1].InputIds.Length).Select(x => (int)x));
        Assert.Equal(2L, batch.InputIds[100 + data.Examples[2].InputIds.Length]);
    }

    static string RewardYaml(TempDir dir, string extra)
    {
        File.WriteAllLines(dir["pairs.jsonl"], Enumerable.Range(0, 12).Select(i => new JsonObject
        {
            ["input"] = $"What is {i} + {i}?", ["chosen"] = $"It is {2 * i}.", ["rejected"] = $"It is {2 * i + 3}, I think.",
        }.ToJsonString()));
        return $"""
            base_model: {Quickstart}
            model_type: AutoModelForSequenceClassification
            num_labels: 1
            reward_model: true
            chat_template: chatml
            datasets:
              - path: {dir["pairs.jsonl"]}
                type: bradley_terry.chat_template
            val_set_size: 4
            sequence_len: 64
            micro_batch_size: 2
            max_steps: 2
            eval_steps: 2
            logging_steps: 1
            warmup_steps: 0
            learning_rate: 0.002
            bf16: false
            output_dir: {dir["out"]}
            {extra}
            """;
    }

    [Fact]
    public void Reward_model_trains_with_lora_and_saves_a_seq_cls_adapter_with_the_score_head()
    {
        using var dir = TestSetup.TempDir();
        var config = ConfigLoader.Parse(RewardYaml(dir, "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_linear: true\ncenter_rewards_coefficient: 0.01"), "reward.yml");
        Assert.True(config.PadToSequenceLen);   // Axolotl's default for reward models
        var logs = FinetuneRecipe.Run(config, new Quiet()).State.LogHistory;
        var first = logs.First(e => e["loss"] != null);
        foreach (var key in new[] { "min_reward", "mean_reward", "max_reward", "accuracy", "margin" })
            Assert.True(first[key] != null, $"{key} not logged");
        Assert.InRange((double)first["accuracy"]!, 0, 1);
        var eval = logs.First(e => e["eval_loss"] != null);
        Assert.True(eval["eval_accuracy"] != null && eval["eval_margin"] != null);

        var adapterConfig = JsonFiles.ReadObject(Path.Combine(dir["out"], "adapter_config.json"));
        Assert.Equal("SEQ_CLS", adapterConfig["task_type"]!.GetValue<string>());
        Assert.Equal(["classifier", "score"], adapterConfig["modules_to_save"]!.AsArray().Select(x => x!.GetValue<string>()));
        var weights = SafetensorsFile.Open(Path.Combine(dir["out"], "adapter_model.safetensors"));
        Assert.Equal([1L, 128L], weights.Entries["base_model.model.score.weight"].Shape);
        Assert.DoesNotContain(weights.Entries.Keys, k => k.Contains("score.lora_"));
        // The score head moved: it was trained in full, from the seeded init.
        manual_seed(config.Seed);
        var fresh = CausalLM.Create(ModelLoading.Architecture(config), ScalarType.Float32, ScalarType.Float32);
        using var saved = weights.Read("base_model.model.score.weight");
        Assert.False(saved.allclose(fresh.score!.weight));

        // axolotl evaluate scores the pairs with the trained adapter and head: the same validation figures as the run's end.
        var evaluated = EvaluateRecipe.Run(config, new Quiet());
        Assert.Equal((double)eval["eval_accuracy"]!, (double)evaluated.Validation!["eval_accuracy"]!, 6);
        Assert.Equal((double)eval["eval_loss"]!, (double)evaluated.Validation!["eval_loss"]!, 4);
        Assert.Contains("\r\naccuracy,", File.ReadAllText(evaluated.SummaryPath));

        // merge-lora folds the adapter in and keeps the trained head: a plain LlamaForSequenceClassification folder.
        var merged = MergeRecipe.Run(config, new Quiet());
        var mergedConfig = JsonFiles.ReadObject(Path.Combine(merged, "config.json"));
        Assert.Equal("LlamaForSequenceClassification", mergedConfig["architectures"]![0]!.GetValue<string>());
        Assert.Equal(2, mergedConfig["pad_token_id"]!.GetValue<int>());
        using var mergedHead = SafetensorsFile.Open(Path.Combine(merged, "model.safetensors")).Read("score.weight");
        Assert.True(mergedHead.to(ScalarType.Float32).allclose(saved, 1e-2, 1e-3));   // rounded to the base's bf16
        // Text generation cannot run a classifier: one sentence instead of nonsense.
        var refused = Assert.Throws<UserError>(() => Axolotl.Inference.InferenceSetup.Load(config, new Quiet()));
        Assert.Contains("score it with axolotl evaluate", refused.Message);
    }

    [Fact]
    public void Reward_model_full_fine_tune_saves_a_sequence_classifier_that_loads_back()
    {
        using var dir = TestSetup.TempDir();
        var config = ConfigLoader.Parse(RewardYaml(dir, ""), "reward.yml");
        FinetuneRecipe.Run(config, new Quiet());
        var saved = JsonFiles.ReadObject(Path.Combine(dir["out"], "config.json"));
        Assert.Equal("LlamaForSequenceClassification", saved["architectures"]![0]!.GetValue<string>());
        Assert.Equal("LABEL_0", saved["id2label"]!["0"]!.GetValue<string>());
        Assert.Single(saved["id2label"]!.AsObject());
        Assert.Equal(2, saved["pad_token_id"]!.GetValue<int>());   // the tokenizer has no pad token: EOS pads, as TRL sets it
        Assert.False(File.Exists(Path.Combine(dir["out"], "generation_config.json")));
        var weights = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        Assert.Equal([1L, 128L], weights.Entries["score.weight"].Shape);
        Assert.DoesNotContain("lm_head.weight", weights.Entries.Keys);

        // As base_model of another reward run, the saved head is loaded rather than drawn afresh.
        var again = ConfigLoader.Parse(RewardYaml(dir, "").Replace($"base_model: {Quickstart}", $"base_model: {dir["out"]}"), "reward.yml");
        var model = CausalLM.Create(ModelLoading.Architecture(again), ScalarType.Float32, ScalarType.Float32);
        model.LoadWeights(dir["out"]);
        using var head = weights.Read("score.weight");
        Assert.True(head.to(ScalarType.Float32).allclose(model.score!.weight));
    }

    [Fact]
    public void Process_reward_model_trains_and_saves_a_token_classifier()
    {
        using var dir = TestSetup.TempDir();
        File.WriteAllLines(dir["steps.jsonl"], Enumerable.Range(0, 10).Select(i => new JsonObject
        {
            ["prompt"] = $"What is {i} + 1?",
            ["completions"] = new JsonArray($"{i} + 1 = {i + 1 + i % 2}.", $"The answer is {i + 1 + i % 2}."),
            ["labels"] = new JsonArray(i % 2 == 0, i % 2 == 0),
        }.ToJsonString()));
        var config = ConfigLoader.Parse($"""
            base_model: {Quickstart}
            process_reward_model: true
            datasets:
              - path: {dir["steps.jsonl"]}
                type: stepwise_supervised
                step_separator: "\n"
            val_set_size: 2
            sequence_len: 64
            micro_batch_size: 2
            max_steps: 2
            eval_steps: 2
            logging_steps: 1
            warmup_steps: 0
            learning_rate: 0.001
            bf16: false
            output_dir: {dir["out"]}
            """, "prm.yml");
        Assert.Equal((2, "AutoModelForTokenClassification"), (config.NumLabels, config.ModelType));
        var logs = FinetuneRecipe.Run(config, new Quiet()).State.LogHistory;
        Assert.Equal(2, logs.Count(e => e["loss"] != null));
        var eval = logs.First(e => e["eval_loss"] != null);
        Assert.InRange((double)eval["eval_accuracy"]!, 0, 1);
        var saved = JsonFiles.ReadObject(Path.Combine(dir["out"], "config.json"));
        Assert.Equal("LlamaForTokenClassification", saved["architectures"]![0]!.GetValue<string>());
        Assert.Equal(2, saved["id2label"]!.AsObject().Count);
        var weights = SafetensorsFile.Open(Path.Combine(dir["out"], "model.safetensors"));
        Assert.Equal([2L, 128L], weights.Entries["score.weight"].Shape);
        Assert.Equal([2L], weights.Entries["score.bias"].Shape);
        Assert.DoesNotContain("lm_head.weight", weights.Entries.Keys);
    }
}
