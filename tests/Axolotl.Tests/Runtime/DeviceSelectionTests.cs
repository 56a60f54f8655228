using Axolotl.Config;
using Axolotl.Runtime;
using Axolotl.Tests.Reliability;
using TorchSharp;
using static TorchSharp.torch;

namespace Axolotl.Tests.Runtime;

/// <summary>The <c>device</c> key (ours to interpret: Axolotl computes it), and device_map read as a device where it names one.</summary>
public class DeviceSelectionTests
{
    const string Minimal = """
        base_model: some/model
        datasets:
          - path: data.jsonl
            type: alpaca
        learning_rate: 0.0002

        """;

    static AxolotlConfig Parse(string yaml, params string[] overrides) => ConfigLoader.Parse(yaml, "cfg.yml", overrides);

    [Theory]
    [InlineData("", "auto")]
    [InlineData("device: CPU", "cpu")]
    [InlineData("device: cuda", "cuda")]
    [InlineData("device: cuda:01", "cuda:1")]
    [InlineData("device_map: cuda:0", "cuda:0")]
    [InlineData("device_map: 1", "cuda:1")]
    [InlineData("device_map: {'': cpu}", "cpu")]
    [InlineData("device_map: cpu\ndevice: cpu", "cpu")]
    public void Device_comes_from_the_device_key_or_a_device_map_naming_one_device(string yaml, string expected)
    {
        var config = Parse(Minimal + yaml);
        Assert.Equal(expected, config.Device);
        Assert.DoesNotContain(config.Warnings, w => w.Contains("device"));
    }

    [Fact]
    public void The_device_flag_overrides_the_file()
    {
        Assert.Equal("cpu", Parse(Minimal + "device: cuda", "--device", "cpu").Device);
        Assert.Equal("cuda:2", Parse(Minimal, "--device=cuda:2").Device);
    }

    [Fact]
    public void A_device_map_that_spreads_the_model_stays_a_warning()
    {
        var config = Parse(Minimal + "device_map: auto");
        Assert.Equal("auto", config.Device);
        Assert.Contains(config.Warnings, w => w.Contains("'device_map: auto'") && w.Contains("one device"));
    }

    [Theory]
    [InlineData("device: gpu", "'device' must be auto, cpu, cuda or cuda:N, not 'gpu'")]
    [InlineData("device: cuda:x", "'device' must be")]
    [InlineData("device: cpu\ndevice_map: cuda:0", "device_map 'cuda:0' and device 'cpu' disagree")]
    public void Devices_that_are_not_one_are_refused_naming_the_key(string yaml, string message)
    {
        var e = Assert.ThrowsAny<UserError>(() => Parse(Minimal + yaml));
        Assert.Contains(message, e.Message);
        Assert.StartsWith("cfg.yml", e.Message);
    }

    [Fact]
    public void Cpu_is_the_cpu_and_auto_is_cuda_only_where_torch_sees_it()
    {
        Assert.Equal(DeviceType.CPU, ComputeDevice.Resolve("cpu", "cfg.yml").type);
        Assert.Equal(cuda.is_available() ? DeviceType.CUDA : DeviceType.CPU, ComputeDevice.Resolve("auto", "cfg.yml").type);
    }

    [WithoutCudaTheory]
    [InlineData("cuda")]
    [InlineData("cuda:1")]
    public void Without_cuda_a_gpu_device_is_refused_in_one_sentence(string setting)
    {
        var e = Assert.Throws<UserError>(() => ComputeDevice.Resolve(setting, "cfg.yml"));
        Assert.StartsWith($"cfg.yml: device '{setting}' asks for a GPU, but CUDA is not available here", e.Message);
        Assert.Contains("device: cpu or auto", e.Message);
    }

    [Fact]
    public void Same_device_ignores_how_the_first_gpu_is_written()
    {
        Assert.True(ComputeDevice.Same(CPU, new Device(DeviceType.CPU, -1)));
        Assert.True(ComputeDevice.Same(new Device(DeviceType.CUDA, -1), new Device(DeviceType.CUDA, 0)));
        Assert.False(ComputeDevice.Same(new Device(DeviceType.CUDA, 0), new Device(DeviceType.CUDA, 1)));
        Assert.False(ComputeDevice.Same(CPU, META));
    }
}

/// <summary>train, evaluate and inference with a device this machine lacks: exit 2 and one sentence naming the key; cpu trains.</summary>
[Collection(CapturedConsole.Name)]
public class DeviceCliTests
{
    static string WriteConfig(TempDir dir, string extra = "")
    {
        File.WriteAllText(dir["data.jsonl"], """
            {"instruction": "Name a colour.", "input": "", "output": "Blue."}
            {"instruction": "Say hi.", "input": "", "output": "Hi."}

            """);
        File.WriteAllText(dir["c.yml"], $"""
            base_model: {TestSetup.Data("reference", "models", "tiny-llama")}
            tokenizer_config: {TestSetup.Data("tok-tiny512")}
            datasets:
              - path: {dir["data.jsonl"]}
                type: alpaca
            sequence_len: 256
            learning_rate: 0.001
            max_steps: 1
            save_strategy: "no"
            output_dir: {dir["out"]}
            {extra}
            """);
        return dir["c.yml"];
    }

    [WithoutCudaTheory]
    [InlineData("train")]
    [InlineData("evaluate")]
    [InlineData("inference")]
    public void A_gpu_that_is_not_there_is_one_sentence_naming_the_key(string command)
    {
        using var dir = TestSetup.TempDir();
        var config = WriteConfig(dir);
        string[] args = command == "inference" ? [command, config, "--device", "cuda", "--prompt", "hi"] : [command, config, "--device", "cuda"];
        InProcessCli.AssertUserError(InProcessCli.Run(args), "c.yml", "device 'cuda'", "CUDA is not available");
        Assert.False(Directory.Exists(dir["out"]) && Directory.EnumerateFiles(dir["out"], "*.safetensors").Any());
    }

    [Theory]
    [InlineData("device: cpu")]
    [InlineData("device: auto")]
    public void Cpu_and_auto_train_as_before(string line)
    {
        using var dir = TestSetup.TempDir();
        var (code, stdout, stderr) = InProcessCli.Run("train", WriteConfig(dir, line));
        Assert.True(code == 0, $"exit {code}: {stderr}");
        Assert.Contains(line.EndsWith("auto") && cuda.is_available() ? "Device: cuda:0" : "Device: cpu", stdout);
        Assert.True(File.Exists(Path.Combine(dir["out"], "model.safetensors")));
    }
}
