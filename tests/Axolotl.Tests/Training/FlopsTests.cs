using Axolotl.Training;

namespace Axolotl.Tests.Training;

public class FlopsTests
{
    [Fact]
    public void PerToken_counts_6N_trained_4N_frozen_and_the_attention_term()
    {
        // Full fine-tune, untied: 1,000 parameters of which 100 are the input embedding → N = 900 matmul weights, all
        // trained: 6·900 = 5,400; attention 12·2 layers·10 seq·8 width = 1,920. Total 7,320.
        Assert.Equal(7_320, Flops.PerToken(1_000, 1_000, 100, layers: 2, attentionWidth: 8, sequenceLength: 10));
        // LoRA, tied (no embedding subtracted): 1,000 weights, 40 trained → 6·40 + 4·960 = 240 + 3,840 = 4,080; + 1,920.
        Assert.Equal(6_000, Flops.PerToken(1_000, 40, 0, layers: 2, attentionWidth: 8, sequenceLength: 10));
    }
}
