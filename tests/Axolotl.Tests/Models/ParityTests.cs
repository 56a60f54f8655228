using System.Text.Json.Nodes;
using Axolotl.IO;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>Forward pass and loss against transformers 4.40 outputs for the same weights (shared/reference).</summary>
public class ParityTests
{
    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    public void Logits_match_transformers(string name)
    {
        using var scope = NewDisposeScope();
        var lm = CausalLM.FromPretrained(TestSetup.Data("reference", "models", name), ScalarType.Float32, ScalarType.Float32);
        var reference = SafetensorsFile.Open(TestSetup.Data("reference", $"step1_logits_{name}.safetensors"));
        var ids = reference.Read("input_ids").to(ScalarType.Int64);
        var expected = reference.Read("logits");
        using var _ = no_grad();
        var logits = lm.forward(ids);
        Assert.Equal(expected.shape, logits.shape);
        var maxDiff = (logits - expected).abs().max().item<float>();
        Assert.True(maxDiff < 1e-5, $"max |logits - reference| = {maxDiff}");
    }

    [Theory]
    [InlineData("tiny-llama")]
    [InlineData("tiny-qwen2-randbias")]
    public void Loss_matches_transformers(string name)
    {
        using var scope = NewDisposeScope();
        var json = JsonNode.Parse(File.ReadAllText(TestSetup.Data("reference", "logits.json")))!;
        var ids = tensor(json["input_ids"]![0]!.AsArray().Select(x => (long)x!).ToArray()).unsqueeze(0);
        var lm = CausalLM.FromPretrained(TestSetup.Data("reference", "models", name), ScalarType.Float32, ScalarType.Float32);
        using var _ = no_grad();
        var (sum, tokens) = lm.LossSum(ids, ids);
        Assert.Equal(7, tokens);
        double loss = sum.item<float>() / tokens;
        double expected = (double)json["models"]![name]!["loss_labels_eq_input_ids"]!;
        Assert.InRange(loss, expected - 1e-5, expected + 1e-5);
    }
}
