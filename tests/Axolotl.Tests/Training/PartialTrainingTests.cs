using System.Text.Json.Nodes;
using Axolotl.Config;
using Axolotl.Data;
using Axolotl.Models;
using Axolotl.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Tests.Training;

/// <summary>unfrozen_parameters (Axolotl's freeze_layers_except) and LISA (Axolotl's LISA callback).</summary>
[Collection(GlobalTorchRng.Name)]
public class PartialTrainingTests
{
    static string TinyLlama => TestSetup.Data("reference", "models", "tiny-llama");

    static CausalLM Model(ScalarType type = ScalarType.Float32) => CausalLM.FromPretrained(TinyLlama, type, type);

    /// <summary>The tiny llama's architecture with more layers and fresh weights.</summary>
    static CausalLM Deep(int layers, long seed = 3)
    {
        var model = CausalLM.Create(DecoderConfig.FromFolder(TinyLlama, new JsonObject { ["num_hidden_layers"] = layers }), ScalarType.Float32, ScalarType.Float32);
        model.InitializeWeights(seed);
        return model;
    }

    static List<Example> Examples(int count = 4)
    {
        var random = new Random(11);
        return [.. Enumerable.Range(0, count).Select(i =>
        {
            var ids = Enumerable.Range(0, 24 + 5 * i).Select(_ => random.Next(3, 512)).ToArray();
            return new Example(ids, ids);
        })];
    }

    static TrainingOptions Options(int steps, int accumulation = 1, double weightDecay = 0) => new()
    {
        MicroBatchSize = 1, GradientAccumulationSteps = accumulation, MaxSteps = steps, NumEpochs = 100, LearningRate = 1e-2,
        LrScheduler = "constant", WarmupSteps = 0, WeightDecay = weightDecay, LoggingSteps = 1, PadTokenId = 0,
    };

    static Dictionary<string, Tensor> Snapshot(nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    // --- unfrozen_parameters: the matching rule --------------------------------------------------------------------

    /// <summary>
    /// Expected values worked out from Python's re semantics on the pattern after Axolotl's rewrite (each '.' not
    /// followed by '+' becomes '\.') and re.match (anchored at the start only).
    /// </summary>
    [Theory]
    [InlineData("^model.layers.1[0-9].mlp", "model.layers.12.mlp.up_proj.weight", true)]
    [InlineData("^model.layers.1[0-9].mlp", "model.layers.1.mlp.up_proj.weight", false)]    // [0-9] needs a second digit
    [InlineData("^model.layers.1[0-9].mlp", "model.layers.112.mlp.up_proj.weight", false)]  // then '\.' meets '2'
    [InlineData("model.layers.4[4-9]+.block_sparse_moe.gate", "model.layers.45.block_sparse_moe.gate.weight", true)]
    [InlineData("layers.2[0-9]+.mlp", "model.layers.21.mlp.up_proj.weight", false)]          // re.match: from the start
    [InlineData("^model.layers.0.mlp", "model_layers.0.mlp.up_proj.weight", false)]           // the dot is literal
    [InlineData("^model.+up_proj.weight$", "model.layers.3.mlp.up_proj.weight", true)]       // '.+' stays a wildcard
    [InlineData("^lm_head.weight$", "lm_head.weight", true)]
    [InlineData("^lm_head.weight$", "lm_head.weight_extra", false)]
    [InlineData("^model.language_model.*", "model.language_model.layers.0.mlp.up_proj.weight", true)]
    [InlineData("^model.language_model.*", "model.vision_tower.encoder.weight", false)]
    [InlineData("^model.language_model.*", "model.language_model_head.weight", true)]       // '.*' became '\.*': zero dots
    [InlineData("embed_tokens", "model.embed_tokens.weight", false)]
    public void Patterns_match_as_axolotls_rewritten_regex_under_re_match(string pattern, string name, bool expected) =>
        Assert.Equal(expected, UnfrozenPattern.Parse(pattern).Matches(name));

    [Theory]
    [InlineData("^model.embed_tokens.weight$[:32000]", "^model.embed_tokens.weight$", 0, 32000)]
    [InlineData("lm_head.weight[5]", "lm_head.weight", 5, 6)]
    [InlineData("lm_head.weight[3:]", "lm_head.weight", 3, null)]
    [InlineData("lm_head.weight[2:9]", "lm_head.weight", 2, 9)]
    public void A_trailing_index_range_is_cut_off_before_the_regex(string pattern, string name, int start, int? end)
    {
        var p = UnfrozenPattern.Parse(pattern);
        Assert.Equal((start, end), (p.RangeStart!.Value, p.RangeEnd));
        Assert.True(p.Matches(name.TrimStart('^').TrimEnd('$')));
        Assert.Contains("empty range", Assert.Throws<UserError>(() => UnfrozenPattern.Parse("lm_head.weight[9:2]")).Message);
    }

    [Fact]
    public void Ranges_merge_and_invert_as_axolotls_helpers()
    {
        var merged = UnfrozenParameters.MergeRanges([(5, 10), (0, 3), (8, 12), (20, null)], 30, "w");
        Assert.Equal([(0L, 3L), (5L, 12L), (20L, 30L)], merged);
        Assert.Equal([(3L, 5L), (12L, 20L)], UnfrozenParameters.InvertRanges(merged, 30));
        Assert.Throws<UserError>(() => UnfrozenParameters.MergeRanges([(0, 40)], 30, "w"));
    }

    // --- unfrozen_parameters: training ----------------------------------------------------------------------------

    [Fact]
    public void Only_matched_parameters_train_the_rest_stays_bit_identical_and_has_no_optimizer_state()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var model = Model();
        Assert.Null(UnfrozenParameters.Apply(model, ["^model.layers.1.mlp", "^lm_head.weight$"]));
        // The names that must train, chosen here by hand from the model's parameter list.
        string[] expected = ["lm_head.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"];
        Assert.Equal(expected, model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).Order(StringComparer.Ordinal));
        var before = Snapshot(model);
        var checkpoints = new CheckpointOptions(dir.Path, d => model.SavePretrained(d)) { SaveSteps = 2 };
        new Trainer(model, Options(2), checkpoints: checkpoints).Train(Examples());
        foreach (var (name, parameter) in model.named_parameters())
            Assert.True(expected.Contains(name) != Same(before[name], parameter), $"{name}: {(expected.Contains(name) ? "did not train" : "changed while frozen")}");
        // AdamW keeps two fp32 moments per trained value and nothing for the frozen ones.
        long trained = model.named_parameters().Where(p => expected.Contains(p.name)).Sum(p => p.parameter.numel());
        long total = model.parameters().Sum(p => p.numel());
        long stateBytes = new FileInfo(Path.Combine(dir.Path, "checkpoint-2", CheckpointStore.OptimizerFile)).Length;
        Assert.InRange(stateBytes, 8 * trained, 8 * trained + 4096);
        Assert.True(8 * trained + 4096 < 8 * total);
        // The saved model is complete.
        using var saved = CausalLM.FromPretrained(Path.Combine(dir.Path, "checkpoint-2"), ScalarType.Float32, ScalarType.Float32);
        Assert.Equal(model.named_parameters().Select(p => p.name), saved.named_parameters().Select(p => p.name));
    }

    [Fact]
    public void A_row_range_trains_only_those_rows_with_bf16_accumulation()
    {
        using var scope = NewDisposeScope();
        var model = Model(ScalarType.BFloat16);
        var callback = UnfrozenParameters.Apply(model, ["^model.embed_tokens.weight$[:256]"]);
        Assert.NotNull(callback);
        var before = Snapshot(model)["model.embed_tokens.weight"];
        var trainer = new Trainer(model, Options(2, accumulation: 2));
        trainer.Callbacks.Add(callback!);
        trainer.Train(Examples());
        var after = model.model.embed_tokens.weight.detach();
        Assert.True(Same(before.narrow(0, 256, 256), after.narrow(0, 256, 256)), "rows outside the range changed");
        Assert.False(Same(before.narrow(0, 0, 256), after.narrow(0, 0, 256)), "rows inside the range did not train");
    }

    [Fact]
    public void Patterns_matching_nothing_are_a_user_error()
    {
        using var scope = NewDisposeScope();
        var e = Assert.Throws<UserError>(() => UnfrozenParameters.Apply(Model(), ["layers.1.mlp"]));
        Assert.Contains("match no parameter", e.Message);
    }

    // --- LISA ------------------------------------------------------------------------------------------------------

    [Fact]
    public void Numpys_legacy_generator_is_reproduced()
    {
        // np.random.seed(42); np.random.permutation(10), and the same for seed 0 (NumPy's documented legacy stream).
        Assert.Equal([8, 1, 5, 0, 7, 2, 9, 4, 3, 6], new NumpyRandomState(42).Permutation(10));
        Assert.Equal([2, 8, 4, 9, 1, 6, 7, 3, 0, 5], new NumpyRandomState(0).Permutation(10));
        // The C++ standard's check of MT19937: the 10000th output for the default seed 5489 is 4123659995.
        var mt = new NumpyRandomState(5489);
        uint value = 0;
        for (int i = 0; i < 10000; i++) value = mt.NextUInt32();
        Assert.Equal(4123659995u, value);
    }

    /// <summary>Records, for each step, the layers LISA had active at its backward pass and the layers whose weights changed.</summary>
    sealed class ChangedLayers(CausalLM model, LisaCallback lisa) : ITrainerCallback
    {
        Dictionary<string, Tensor> _before = [];
        public List<(int Step, int[] Active, int[] Changed, bool EmbeddingsChanged)> Steps { get; } = [];
        int[] _active = [];

        public void OnTrainBegin(TrainerContext c) { _before = Snapshot(model); }

        public void OnAfterBackward(TrainerContext c)
        {
            _active = [.. lisa.ActiveLayers.Order()];
            // Frozen layers hold no gradient (zero_grad(set_to_none=True) as HF runs it): no memory goes to them.
            for (int i = 0; i < model.Config.NumLayers; i++)
                if (!_active.Contains(i))
                    Assert.All(model.model.layers[i].parameters(), p => Assert.Null(p.grad));
        }

        public void OnStepEnd(TrainerContext c)
        {
            var now = Snapshot(model);
            var changed = Enumerable.Range(0, model.Config.NumLayers)
                .Where(i => now.Where(p => p.Key.StartsWith($"model.layers.{i}.")).Any(p => !Same(p.Value, _before[p.Key]))).ToArray();
            Steps.Add((c.Step, _active, changed, !Same(now["model.embed_tokens.weight"], _before["model.embed_tokens.weight"])));
            _before = now;
        }
    }

    [Fact]
    public void Lisa_trains_exactly_the_drawn_layers_each_interval_starting_with_numpys_choice()
    {
        using var scope = NewDisposeScope();
        var model = Deep(10);
        var lisa = new LisaCallback(3, 2, "model.layers", 42);
        var watch = new ChangedLayers(model, lisa);
        var trainer = new Trainer(model, Options(6));
        // LISA's OnStepEnd draws the next layers before the watcher's runs: the watcher notes the active set at backward.
        trainer.Callbacks.Add(lisa);
        trainer.Callbacks.Add(watch);
        trainer.Train(Examples());
        // np.random.seed(42); np.random.choice(range(10), 3, replace=False) = permutation(10)[:3] = [8, 1, 5].
        Assert.Equal([1, 5, 8], watch.Steps[0].Active);
        Assert.Equal(6, watch.Steps.Count);
        foreach (var (step, active, changed, embeddings) in watch.Steps)
        {
            Assert.Equal(3, active.Length);
            Assert.Equal(active, changed);
            Assert.True(embeddings, $"step {step}: the embeddings always train");
        }
        // Axolotl switches at global steps 0, 1, 2, 4: steps 3-4 and 5-6 share their layers.
        Assert.Equal(watch.Steps[2].Active, watch.Steps[3].Active);
        Assert.Equal(watch.Steps[4].Active, watch.Steps[5].Active);
        Assert.Equal([true, true, true, false, true, false], Enumerable.Range(0, 6).Select(lisa.SwitchesAt).ToArray());
    }

    [Fact]
    public void A_parameter_frozen_for_a_step_starts_adams_bias_correction_at_its_own_first_step()
    {
        using var scope = NewDisposeScope();
        var p1 = new Parameter(ones(4));
        var p2 = new Parameter(ones(4));
        const double lr = 0.01;
        using var optimizer = TrainingOptimizer.Create("adamw_torch", [("a", p1), ("b", p2)], new TrainingOptions());
        var gradient = tensor(new[] { 0.5f, -2f, 3f, -0.25f });
        void Backward() { optimizer.ZeroGrad(); ((p1 * gradient).sum() + (p2.requires_grad ? (p2 * gradient).sum() : zeros(1).sum())).backward(); }
        p2.requires_grad = false;
        Backward();
        optimizer.Step(lr);
        Assert.True(Same(p2.detach(), ones(4)), "a frozen parameter moved");
        p2.requires_grad = true;
        Backward();
        using (no_grad()) optimizer.Step(lr);
        // torch's AdamW at a parameter's first step: m̂ = g, v̂ = g², so each element moves by lr · sign(g) (ε aside).
        var moved = (ones(4) - p2.detach()) / lr;
        Assert.True(moved.allclose(gradient.sign(), rtol: 1e-5, atol: 1e-5), $"first update of the late parameter: {string.Join(", ", moved.data<float>().ToArray())}");
    }

    static (CausalLM Model, TrainerState State) RunLisa(string outputDir, int steps, string? resumeFrom = null)
    {
        Directory.CreateDirectory(outputDir);
        var model = Deep(6);
        if (resumeFrom != null) model.LoadWeights(resumeFrom);
        var checkpoints = new CheckpointOptions(outputDir, d => model.SavePretrained(d)) { SaveSteps = 3 };
        var trainer = new Trainer(model, Options(steps, weightDecay: 0.1), checkpoints: checkpoints);
        trainer.Callbacks.Add(new LisaCallback(2, 2, "model.layers", 7));
        var state = trainer.Train(Examples(), resumeFrom);
        return (model, state);
    }

    [Fact]
    public void A_lisa_run_resumed_mid_interval_ends_on_the_same_weights()
    {
        using var scope = NewDisposeScope();
        using var dir = TestSetup.TempDir();
        var (full, fullState) = RunLisa(dir["a"], 7);
        var (resumed, resumedState) = RunLisa(dir["b"], 7, Path.Combine(dir["a"], "checkpoint-3"));
        Assert.Equal(7, resumedState.GlobalStep);
        var losses = (TrainerState s) => s.LogHistory.Where(e => e["loss"] != null).Select(e => (double)e["loss"]!).ToArray();
        Assert.Equal(losses(fullState), losses(resumedState));
        foreach (var (name, parameter) in full.named_parameters())
            Assert.True(Same(parameter, resumed.named_parameters().First(p => p.name == name).parameter), $"{name} differs after the resume");
    }

    [Fact]
    public void Lisa_names_a_bad_layers_attribute_and_too_many_layers()
    {
        using var scope = NewDisposeScope();
        var model = Deep(2);
        Assert.Contains("model.layers", Assert.Throws<UserError>(() => new Trainer(model, Options(1)) { Callbacks = { new LisaCallback(1, 1, "model.blocks", 1) } }.Train(Examples())).Message);
        Assert.Contains("more than the 2 layers", Assert.Throws<UserError>(() => new Trainer(model, Options(1)) { Callbacks = { new LisaCallback(3, 1, "model.layers", 1) } }.Train(Examples())).Message);
    }
}
