using Axolotl.Config;

namespace Axolotl.Tests.Config;

/// <summary>The share of Axolotl's own example configs that load is the compatibility figure; it may only grow.</summary>
public class CompatibilityFigureTests
{
    [Fact]
    public void At_least_30_of_Axolotls_50_example_configs_load_and_the_rest_are_refused_by_name()
    {
        var configs = Directory.GetFiles(TestSetup.Data("axolotl-configs")).Where(f => f.EndsWith(".yml") || f.EndsWith(".yaml")).ToList();
        Assert.Equal(50, configs.Count);
        int loaded = 0;
        foreach (var path in configs)
        {
            try { ConfigLoader.Load(path, []); loaded++; }
            catch (UnsupportedKeysError e) { Assert.NotEmpty(e.Keys); }
        }
        Assert.True(loaded >= 31, $"only {loaded} of 50 example configs load");
    }
}
