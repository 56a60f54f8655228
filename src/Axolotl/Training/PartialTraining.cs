using Axolotl.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Axolotl.Training;

/// <summary>
/// Axolotl's unfrozen_parameters (utils/freeze.py, freeze_layers_except): every parameter whose HF name matches none of
/// the patterns is frozen before the optimizer is built, so only the matched ones get gradients, optimizer state and
/// updates; the saved model stays complete. A pattern with a row range (<c>^model.embed_tokens.weight$[:32000]</c>)
/// trains the whole parameter but zeroes the gradient of the rows outside its ranges, as Axolotl's gradient hook does
/// (so weight decay still reaches those rows, and their optimizer state exists, as Axolotl's schema says).
/// </summary>
internal static class UnfrozenParameters
{
    /// <summary>Freezes what the patterns do not match; returns the callback that zeroes out-of-range rows, or null.</summary>
    public static ITrainerCallback? Apply(nn.Module model, IReadOnlyList<string> patterns, Action<string>? info = null)
    {
        var parsed = patterns.Select(UnfrozenPattern.Parse).ToList();
        var frozenRows = new List<(Parameter Parameter, List<(long Start, long End)> Rows)>();
        long trainable = 0, total = 0;
        int trainableTensors = 0;
        foreach (var (name, parameter) in model.named_parameters())
        {
            parameter.requires_grad = false;
            total += parameter.numel();
            var ranges = new List<(long Start, long? End)>();
            foreach (var pattern in parsed.Where(p => p.Matches(name)))
            {
                parameter.requires_grad = true;
                if (pattern.HasRange) ranges.Add((pattern.RangeStart!.Value, pattern.RangeEnd));
            }
            if (!parameter.requires_grad) continue;
            trainableTensors++;
            trainable += parameter.numel();
            long rows = parameter.dim() == 0 ? 1 : parameter.shape[0];
            var merged = MergeRanges(ranges, rows, name);
            if (merged.Count > 0) frozenRows.Add((parameter, InvertRanges(merged, rows)));
        }
        if (trainableTensors == 0)
        {
            var example = model.named_parameters().Select(p => p.name).Skip(1).FirstOrDefault() ?? "";
            throw new UserError($"unfrozen_parameters [{string.Join(", ", patterns)}] match no parameter of the model, so nothing would train " +
                                $"(names are HF's, e.g. '{example}'; a pattern matches from the start of the name).");
        }
        info?.Invoke($"unfrozen_parameters: {trainableTensors} parameter tensors train ({trainable:N0} of {total:N0} values); the rest is frozen" +
                     (frozenRows.Count > 0 ? $", and {frozenRows.Count} of them train only their given rows." : "."));
        return frozenRows.Count > 0 ? new RowRangeCallback(frozenRows) : null;
    }

    /// <summary>Axolotl's _merge_ranges: open ends become the row count; overlapping ranges join; bad ranges fail.</summary>
    internal static List<(long Start, long End)> MergeRanges(List<(long Start, long? End)> given, long rows, string name)
    {
        var ranges = given.Select(r => (r.Start, End: r.End ?? rows)).ToList();
        foreach (var (start, end) in ranges)
            if (start < 0 || (end > rows && rows > 0) || start >= end)
                throw new UserError($"unfrozen_parameters: the range [{start}:{end}] does not fit '{name}', which has {rows} rows.");
        var merged = new List<(long Start, long End)>();
        foreach (var (start, end) in ranges.OrderBy(r => r.Start).ThenBy(r => r.End))
        {
            if (merged.Count > 0 && start <= merged[^1].End) merged[^1] = (merged[^1].Start, Math.Max(merged[^1].End, end));
            else merged.Add((start, end));
        }
        return merged;
    }

    /// <summary>Axolotl's _invert_ranges: the rows outside the merged ranges.</summary>
    internal static List<(long Start, long End)> InvertRanges(List<(long Start, long End)> merged, long rows)
    {
        var inverted = new List<(long, long)>();
        long current = 0;
        foreach (var (start, end) in merged)
        {
            if (start > current) inverted.Add((current, start));
            current = Math.Max(current, end);
        }
        if (current < rows) inverted.Add((current, rows));
        return inverted;
    }

    /// <summary>Zeroes the gradient rows outside a pattern's range once the window's backward is done (Axolotl does it in
    /// a gradient hook at each backward; the sum of zeroed gradients is the zeroed sum).</summary>
    sealed class RowRangeCallback(List<(Parameter Parameter, List<(long Start, long End)> Rows)> frozenRows) : ITrainerCallback
    {
        public void OnAfterBackward(TrainerContext context)
        {
            using var _ = no_grad();
            foreach (var (parameter, rows) in frozenRows)
            {
                if (context.Optimizer.GradientOf(parameter) is not { } grad) continue;
                foreach (var (start, end) in rows)
                {
                    using var slice = grad.dim() == 0 ? grad.alias() : grad.narrow(0, start, end - start);
                    slice.zero_();
                }
            }
        }
    }
}

/// <summary>
/// LISA (Axolotl's utils/callbacks/lisa.py, after LMFlow): at the start of training and then at the step boundaries
/// Axolotl's callback switches on (global step 0, 1 and every multiple of lisa_step_interval), every decoder layer under
/// lisa_layers_attribute is frozen and lisa_n_layers of them, drawn by <c>np.random.choice(range(L), n, replace=False)</c>,
/// train until the next switch. Embeddings, the final norm and the head are not layers and always train.
/// <para>The draws come from NumPy's legacy generator seeded with the run's seed (what transformers' set_seed seeds),
/// replayed from step 0 on resume, so a resumed run trains the same layers as an uninterrupted one. (Axolotl itself
/// restores the global NumPy state from rng_state.pth, but leaves every layer trainable after a mid-interval resume.)</para>
/// <para>The optimizer is built over every parameter (a full fine-tune), as in HF where LISA freezes after the
/// optimizer exists; a frozen layer is skipped by the update (no moment decay, no weight decay), and its bias
/// correction continues from its own step count when it is drawn again, as torch's per-parameter step does. Its
/// fp32 master (bf16 weights) is untouched while frozen, so it stays equal to the weight.</para>
/// </summary>
internal sealed class LisaCallback(int layersToTrain, int stepInterval, string layersAttribute, uint seed, Action<string>? info = null) : ITrainerCallback
{
    NumpyRandomState _random = new(seed);
    List<nn.Module> _layers = [];

    /// <summary>The indices of the layers that train now.</summary>
    public IReadOnlyList<int> ActiveLayers { get; private set; } = [];

    /// <summary>Whether Axolotl's callback draws new layers at the start of the step after <paramref name="globalStep"/> steps.</summary>
    public bool SwitchesAt(int globalStep) => globalStep % stepInterval == 0 || globalStep == 1;

    public void OnTrainBegin(TrainerContext context)
    {
        _layers = Layers(context.Model, layersAttribute);
        if (layersToTrain > _layers.Count)
            throw new UserError($"lisa_n_layers {layersToTrain} is more than the {_layers.Count} layers under {layersAttribute}.");
        info?.Invoke($"LISA will activate {layersToTrain}/{_layers.Count} layers ({layersToTrain * 100.0 / _layers.Count:G4}%) every {stepInterval} steps.");
        _random = new NumpyRandomState(seed);
        for (int g = 0; g <= context.Step; g++)
            if (SwitchesAt(g)) ActiveLayers = _random.ChooseWithoutReplacement(_layers.Count, layersToTrain);
        Activate(context.Step);
    }

    public void OnStepEnd(TrainerContext context)
    {
        if (context.Step >= context.Plan.TotalSteps || !SwitchesAt(context.Step)) return;
        ActiveLayers = _random.ChooseWithoutReplacement(_layers.Count, layersToTrain);
        Activate(context.Step);
    }

    void Activate(int step)
    {
        var active = ActiveLayers.ToHashSet();
        for (int i = 0; i < _layers.Count; i++)
            foreach (var p in _layers[i].parameters())
            {
                p.requires_grad = active.Contains(i);
                // A frozen layer's gradient goes, as with zero_grad(set_to_none=True): no memory kept for it.
                if (!p.requires_grad && p.grad is not null) p.grad = null!;
            }
        info?.Invoke($"LISA: training layers [{string.Join(", ", ActiveLayers)}] from step {step + 1}.");
    }

    /// <summary>The decoder layers at <paramref name="attribute"/> (a dotted module path such as model.layers).</summary>
    public static List<nn.Module> Layers(nn.Module model, string attribute)
    {
        var list = model.named_modules().FirstOrDefault(m => m.name == attribute).module;
        if (list is null || !list.named_children().Any())
        {
            var candidates = model.named_modules().Where(m => m.name.EndsWith("layers", StringComparison.Ordinal)).Select(m => m.name).ToList();
            throw new UserError($"lisa_layers_attribute '{attribute}' names no list of layers in this model" +
                                (candidates.Count > 0 ? $" (its decoder layers are at {string.Join(", ", candidates)})." : "."));
        }
        return list.named_children().Select(c => c.module).ToList();
    }
}
