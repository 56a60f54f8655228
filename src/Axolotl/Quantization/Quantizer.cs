using System.Globalization;
using Axolotl.Adapters;
using Axolotl.Config;
using Axolotl.Models;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Axolotl.Models.Linear;

namespace Axolotl.Quantization;

internal enum QuantKind { Nf4, Int8 }

/// <summary>How the frozen base is stored: Axolotl's BitsAndBytesConfig for QLoRA (nf4, double quantization on,
/// compute dtype = the model's), with bnb_config_kwargs applied on top, or load_in_8bit.</summary>
internal sealed record QuantizationSettings(QuantKind Kind, bool DoubleQuant = true, ScalarType? ComputeType = null)
{
    /// <summary>Null when the config loads the base in full precision.</summary>
    public static QuantizationSettings? FromConfig(AxolotlConfig config)
    {
        if (config.LoadIn8Bit && config.Adapter == AdapterKind.Lora) return new QuantizationSettings(QuantKind.Int8);
        if (!(config.LoadIn4Bit && config.Adapter == AdapterKind.Qlora)) return null;
        bool doubleQuant = true;
        ScalarType? compute = null;
        foreach (var (key, value) in config.BnbConfigKwargs ?? [])
        {
            string where = $"{config.SourcePath}: bnb_config_kwargs.{key}";
            switch (key)
            {
                case "bnb_4bit_quant_type":
                    if (value != "nf4") throw new UserError($"{where} = {value}: only nf4 is implemented (fp4 is not).");
                    break;
                case "bnb_4bit_use_double_quant":
                    doubleQuant = bool.TryParse(value, out var d) ? d : throw new UserError($"{where} must be true or false.");
                    break;
                case "bnb_4bit_compute_dtype":
                    compute = value.Replace("torch.", "") switch
                    {
                        "bfloat16" => ScalarType.BFloat16,
                        "float32" => ScalarType.Float32,
                        "float16" => throw new UserError($"{where} = float16: fp16 compute is not implemented on CPU; use bfloat16 or float32."),
                        _ => throw new UserError($"{where} = {value}: use bfloat16 or float32."),
                    };
                    break;
                case "bnb_4bit_quant_storage": // the dtype the packed bytes are viewed as; the bytes are the same
                case "load_in_4bit":
                case "llm_int8_has_fp16_weight":
                    break;
                case "llm_int8_threshold":
                    if (!double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out _)) throw new UserError($"{where} must be a number.");
                    break; // applies to 8-bit layers only, which a 4-bit model has none of
                default:
                    throw new UserError($"{where} is not implemented (known: bnb_4bit_quant_type, bnb_4bit_use_double_quant, bnb_4bit_compute_dtype, bnb_4bit_quant_storage).");
            }
        }
        return new QuantizationSettings(QuantKind.Nf4, doubleQuant, compute);
    }
}

internal static class Quantizer
{
    /// <summary>
    /// Stores every Linear but lm_head in quantized form, as transformers does for a bnb-quantized model (it skips the
    /// output head), disposing the full-precision weights as it goes. Returns the quantized paths.
    /// </summary>
    public static IReadOnlyList<string> QuantizeLinears(nn.Module model, QuantizationSettings settings)
    {
        var targets = QuantizableLinears(model);
        foreach (var path in targets) Replace(model, path, Quantize(LinearAt(model, path).weight, settings), settings);
        return targets;
    }

    /// <summary>The paths of the Linear layers a bnb-quantized model stores quantized: all but lm_head.</summary>
    public static List<string> QuantizableLinears(nn.Module model) =>
        model.named_modules().Where(m => m.module is Linear && m.name is not ("lm_head" or Models.ClassifierHead.Module)).Select(m => m.name).ToList();

    public static Linear LinearAt(nn.Module model, string path)
    {
        var (parent, leaf) = ModuleTree.Parent(model, path);
        return (Linear)parent.named_children().First(c => c.name == leaf).module;
    }

    /// <summary>A weight in the form the settings ask for (the weight itself is left alone).</summary>
    public static IQuantizedWeight Quantize(Tensor weight, QuantizationSettings settings) => settings.Kind == QuantKind.Nf4
        ? new Nf4Quantized(Nf4Weight.Quantize(weight, settings.DoubleQuant))
        : new Int8Quantized(Int8Weight.Quantize(weight));

    /// <summary>Puts <paramref name="weight"/> in the place of the Linear at <paramref name="path"/>, which is disposed.</summary>
    public static void Replace(nn.Module model, string path, IQuantizedWeight weight, QuantizationSettings settings)
    {
        var (parent, leaf) = ModuleTree.Parent(model, path);
        ModuleTree.ReplaceChild(parent, leaf, QuantizedLinear.From(LinearAt(model, path), weight, settings.ComputeType));
    }

    /// <summary>
    /// Replaces every parameter of two or more dimensions by its NF4 quantize → dequantize round trip, rounded to
    /// <paramref name="roundTo"/> (the checkpoint's dtype) and stored back in the parameter's own dtype. Returns the count.
    /// </summary>
    public static int RoundTripNf4(nn.Module model, bool doubleQuant, ScalarType roundTo)
    {
        int count = 0;
        using var _ = no_grad();
        foreach (var p in model.parameters().Where(p => p.dim() >= 2))
        {
            using var scope = NewDisposeScope();
            using var q = Nf4Weight.Quantize(p, doubleQuant);
            p.copy_(q.Dequantize(ScalarType.Float32).to(roundTo));
            count++;
        }
        return count;
    }

    /// <summary>Weights held quantized (not parameters, yet part of the model's size and matmul FLOPs).</summary>
    public static long QuantizedWeightCount(nn.Module model) =>
        model.modules().OfType<QuantizedLinear>().Sum(q => q.InFeatures * q.OutFeatures);

    /// <summary>Bytes held by the quantized layers' weights (codes and scales).</summary>
    public static long QuantizedWeightBytes(nn.Module model) =>
        model.modules().OfType<QuantizedLinear>().Sum(q => q.WeightBytes);
}
