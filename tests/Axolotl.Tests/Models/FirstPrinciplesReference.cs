using System.Text.Json.Nodes;
using Axolotl.IO;
using static TorchSharp.torch;

namespace Axolotl.Tests.Models;

/// <summary>
/// A deliberately naive decoder written from the papers and the transformers modeling files' equations, for the
/// families that have no transformers output in shared/reference (Qwen3, Qwen3-MoE, Gemma 2, Gemma 3, Phi-3, RoPE
/// scalings). It reads config.json and the safetensors by itself and computes in float64, one head and one query at a
/// time, and a mixture of experts one token and one expert at a time, so it shares no code with Axolotl.Models.
/// </summary>
/// <remarks>
/// Gemma 3 and Qwen3-MoE follow transformers' current modeling_gemma3.py and modeling_qwen3_moe.py: Gemma 3 is Gemma 2's
/// sandwich-normed decoder plus (1 + w) RMSNorms on each head's query and key, layer i sliding unless
/// (i + 1) % sliding_window_pattern == 0 (or as layer_types says), sliding layers rotating with rope_local_base_freq,
/// and soft-capping only when the config sets it; Qwen3-MoE is Qwen3 with Qwen2-MoE's router (softmax over all experts,
/// top num_experts_per_tok, renormalised when norm_topk_prob) and no shared expert; the load-balancing loss is
/// load_balancing_loss_func's E · Σ_e f_e · P_e over all sparse layers' tokens.
/// </remarks>
static class FirstPrinciplesReference
{
    public static Tensor Logits(string modelDir, long[] ids) => Forward(modelDir, ids).Logits;

    /// <summary>Logits [1, T, vocab] (float64) and the router load-balancing loss (0 for a dense model).</summary>
    public static (Tensor Logits, double RouterAuxLoss) Forward(string modelDir, long[] ids)
    {
        using var scope = NewDisposeScope();
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(modelDir, "config.json")))!.AsObject();
        var file = SafetensorsFile.Open(Path.Combine(modelDir, "model.safetensors"));
        Tensor W(string name) => file.Read(name).to(ScalarType.Float64);
        bool Has(string name) => file.Entries.ContainsKey(name);
        string type = (string)cfg["model_type"]!;
        int hidden = (int)cfg["hidden_size"]!, heads = (int)cfg["num_attention_heads"]!;
        int kvHeads = (int?)cfg["num_key_value_heads"] ?? heads, layers = (int)cfg["num_hidden_layers"]!;
        int inter = (int)cfg["intermediate_size"]!;
        int headDim = (int?)cfg["head_dim"] ?? hidden / heads;
        double eps = (double?)cfg["rms_norm_eps"] ?? 1e-6;
        bool gemma3 = type == "gemma3_text";
        bool gemma2 = type == "gemma2" || gemma3; // what Gemma 3 shares with Gemma 2
        int pattern = (int?)cfg["sliding_window_pattern"] ?? 6;
        var layerTypes = (cfg["layer_types"] as JsonArray)?.Select(t => (string)t!).ToArray();
        double offset = gemma2 ? 1 : 0;
        double scale = gemma2 ? 1 / Math.Sqrt((double)cfg["query_pre_attn_scalar"]!) : 1 / Math.Sqrt(headDim);
        double? attnCap = (double?)cfg["attn_logit_softcapping"], finalCap = (double?)cfg["final_logit_softcapping"];
        int? window = (int?)cfg["sliding_window"];
        int T = ids.Length;
        int rotary = (int)(headDim * ((double?)cfg["partial_rotary_factor"] ?? 1.0));
        var (globalInvFreq, globalFactor) = InverseFrequencies(cfg, rotary, T);
        var localCfg = cfg.DeepClone().AsObject();
        localCfg["rope_theta"] = cfg["rope_local_base_freq"]?.DeepClone() ?? 10000.0;
        localCfg.Remove("rope_scaling");
        var (localInvFreq, localFactor) = gemma3 ? InverseFrequencies(localCfg, rotary, T) : (globalInvFreq, globalFactor);
        double[] invFreq = globalInvFreq;
        double attentionFactor = globalFactor;
        int experts = (int?)cfg["num_local_experts"] ?? (int?)cfg["num_experts"] ?? 0, topK = (int?)cfg["num_experts_per_tok"] ?? 0;
        bool normTopK = type == "mixtral" || ((bool?)cfg["norm_topk_prob"] ?? false);
        var routerProbabilities = new List<Tensor>(); // per sparse layer: [T, experts]

        Tensor Rms(Tensor x, Tensor w) => x / (x.pow(2).mean([-1], keepdim: true) + eps).sqrt() * (w + offset);
        Tensor Act(Tensor x) => gemma2 ? 0.5 * x * (1 + (Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x.pow(3))).tanh()) : x * x.sigmoid();
        Tensor Rotate(Tensor v, int pos) // v: [headDim]
        {
            var r = v.clone();
            int half = rotary / 2;
            for (int d = 0; d < half; d++)
            {
                double angle = pos * invFreq[d], c = Math.Cos(angle) * attentionFactor, s = Math.Sin(angle) * attentionFactor;
                double a = v[d].item<double>(), b = v[d + half].item<double>();
                r[d] = a * c - b * s;
                r[d + half] = b * c + a * s;
            }
            return r;
        }

        var x = W("model.embed_tokens.weight").index_select(0, tensor(ids));
        if (gemma2) x = x * Math.Sqrt(hidden);
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            var a = Rms(x, W(p + "input_layernorm.weight"));
            Tensor q, k, v;
            if (Has(p + "self_attn.qkv_proj.weight"))
            {
                var qkv = a.matmul(W(p + "self_attn.qkv_proj.weight").t());
                q = qkv[.., ..(heads * headDim)];
                k = qkv[.., (heads * headDim)..((heads + kvHeads) * headDim)];
                v = qkv[.., ((heads + kvHeads) * headDim)..];
            }
            else
            {
                Tensor Proj(string n) => a.matmul(W(p + $"self_attn.{n}.weight").t()) + (Has(p + $"self_attn.{n}.bias") ? W(p + $"self_attn.{n}.bias") : 0);
                (q, k, v) = (Proj("q_proj"), Proj("k_proj"), Proj("v_proj"));
            }
            q = q.reshape(T, heads, headDim); k = k.reshape(T, kvHeads, headDim); v = v.reshape(T, kvHeads, headDim);
            if (Has(p + "self_attn.q_norm.weight"))
            {
                q = Rms(q, W(p + "self_attn.q_norm.weight"));
                k = Rms(k, W(p + "self_attn.k_norm.weight"));
            }
            bool sliding = window is not null && (type == "mistral" || type == "phi3"
                || (layerTypes is not null ? layerTypes[l] == "sliding_attention" : gemma3 ? (l + 1) % pattern != 0 : gemma2 && l % 2 == 0));
            (invFreq, attentionFactor) = sliding ? (localInvFreq, localFactor) : (globalInvFreq, globalFactor);
            var attnOut = zeros(T, heads, headDim, dtype: ScalarType.Float64);
            for (int h = 0; h < heads; h++)
            {
                int g = h / (heads / kvHeads);
                for (int i = 0; i < T; i++)
                {
                    var qi = Rotate(q[i, h], i);
                    var scores = new double[i + 1];
                    for (int j = 0; j <= i; j++)
                    {
                        double sc = (qi * Rotate(k[j, g], j)).sum().item<double>() * scale;
                        if (attnCap is double cap) sc = Math.Tanh(sc / cap) * cap;
                        if (sliding && i - j >= window) sc = double.NegativeInfinity;
                        scores[j] = sc;
                    }
                    double max = scores.Max();
                    var e = scores.Select(s => Math.Exp(s - max)).ToArray();
                    double z = e.Sum();
                    var o = zeros(headDim, dtype: ScalarType.Float64);
                    for (int j = 0; j <= i; j++) o += e[j] / z * v[j, g];
                    attnOut[i, h] = o;
                }
            }
            var attn = attnOut.reshape(T, heads * headDim).matmul(W(p + "self_attn.o_proj.weight").t());
            Tensor Swiglu(Tensor m, string at, string g = "gate_proj", string u = "up_proj", string d = "down_proj") =>
                (Act(m.matmul(W(at + g + ".weight").t())) * m.matmul(W(at + u + ".weight").t())).matmul(W(at + d + ".weight").t());
            Tensor Mixture(Tensor m, string block, bool mixtral)
            {
                var probabilities = (m.matmul(W(block + "gate.weight").t())).softmax(-1);
                routerProbabilities.Add(probabilities);
                var output = zeros_like(m);
                for (int t = 0; t < T; t++)
                {
                    var row = probabilities[t].data<double>().ToArray();
                    var chosen = Enumerable.Range(0, experts).OrderByDescending(e => row[e]).Take(topK).ToArray();
                    double norm = normTopK ? chosen.Sum(e => row[e]) : 1;
                    foreach (int e in chosen)
                    {
                        var token = m[t].unsqueeze(0);
                        var y = mixtral ? Swiglu(token, $"{block}experts.{e}.", "w1", "w3", "w2") : Swiglu(token, $"{block}experts.{e}.");
                        output[t] += row[e] / norm * y[0];
                    }
                }
                if (Has(block + "shared_expert_gate.weight"))
                    output += m.matmul(W(block + "shared_expert_gate.weight").t()).sigmoid() * Swiglu(m, block + "shared_expert.");
                return output;
            }
            Tensor Mlp(Tensor m)
            {
                if (Has(p + "block_sparse_moe.gate.weight")) return Mixture(m, p + "block_sparse_moe.", mixtral: true);
                if (Has(p + "mlp.gate.weight")) return Mixture(m, p + "mlp.", mixtral: false);
                if (!Has(p + "mlp.gate_up_proj.weight")) return Swiglu(m, p + "mlp.");
                var gu = m.matmul(W(p + "mlp.gate_up_proj.weight").t());
                return (Act(gu[.., ..inter]) * gu[.., inter..]).matmul(W(p + "mlp.down_proj.weight").t());
            }
            if (gemma2)
            {
                x = x + Rms(attn, W(p + "post_attention_layernorm.weight"));
                x = x + Rms(Mlp(Rms(x, W(p + "pre_feedforward_layernorm.weight"))), W(p + "post_feedforward_layernorm.weight"));
            }
            else
            {
                x = x + attn;
                x = x + Mlp(Rms(x, W(p + "post_attention_layernorm.weight")));
            }
        }
        x = Rms(x, W("model.norm.weight"));
        var logits = x.matmul((Has("lm_head.weight") ? W("lm_head.weight") : W("model.embed_tokens.weight")).t());
        if (finalCap is double fc) logits = (logits / fc).tanh() * fc;
        return (logits.unsqueeze(0).MoveToOuterDisposeScope(), RouterAuxLoss(routerProbabilities, experts, topK));
    }

    /// <summary>E · Σ_e (share of all layers' top-k choices that pick e, per slot) · (mean probability of e).</summary>
    static double RouterAuxLoss(List<Tensor> probabilities, int experts, int topK)
    {
        if (probabilities.Count == 0) return 0;
        var rows = probabilities.SelectMany(p => Enumerable.Range(0, (int)p.shape[0]).Select(t => p[t].data<double>().ToArray())).ToList();
        double loss = 0;
        for (int e = 0; e < experts; e++)
        {
            double picked = rows.Count(r => Enumerable.Range(0, experts).OrderByDescending(x => r[x]).Take(topK).Contains(e));
            loss += picked / rows.Count * rows.Average(r => r[e]);
        }
        return loss * experts;
    }

    /// <summary>RoPE inverse frequencies per the rope_scaling formulas (transformers' modeling_rope_utils), in doubles.</summary>
    public static (double[] InvFreq, double AttentionFactor) InverseFrequencies(JsonObject cfg, int dim, int seqLen)
    {
        double theta = (double?)cfg["rope_theta"] ?? 10000;
        int maxPos = (int?)cfg["max_position_embeddings"] ?? 2048;
        double[] Plain(double b) => Enumerable.Range(0, dim / 2).Select(i => 1 / Math.Pow(b, 2.0 * i / dim)).ToArray();
        if (cfg["rope_scaling"] is not JsonObject s) return (Plain(theta), 1);
        string type = (string)(s["rope_type"] ?? s["type"])!;
        double factor = (double?)s["factor"] ?? 1;
        switch (type)
        {
            case "linear": return (Plain(theta).Select(f => f / factor).ToArray(), 1);
            case "dynamic":
                double len = Math.Max(seqLen, maxPos);
                return (Plain(theta * Math.Pow(factor * len / maxPos - (factor - 1), dim / (dim - 2.0))), 1);
            case "llama3":
            {
                double old = (double)s["original_max_position_embeddings"]!, lo = (double)s["low_freq_factor"]!, hi = (double)s["high_freq_factor"]!;
                return (Plain(theta).Select(f =>
                {
                    double wavelen = 2 * Math.PI / f;
                    if (wavelen < old / hi) return f; // high frequency: kept
                    if (wavelen > old / lo) return f / factor; // low frequency: interpolated
                    double smooth = (old / wavelen - lo) / (hi - lo);
                    return (1 - smooth) * f / factor + smooth * f;
                }).ToArray(), 1);
            }
            case "yarn":
            {
                double original = (double?)s["original_max_position_embeddings"] ?? maxPos;
                double CorrDim(double rot) => dim * Math.Log(original / (rot * 2 * Math.PI)) / (2 * Math.Log(theta));
                double low = Math.Max(Math.Floor(CorrDim(32)), 0), high = Math.Min(Math.Ceiling(CorrDim(1)), dim - 1);
                var inv = Plain(theta).Select((f, i) =>
                {
                    double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
                    return f / factor * ramp + f * (1 - ramp);
                }).ToArray();
                return (inv, 0.1 * Math.Log(factor) + 1);
            }
            case "longrope":
            {
                double original = (double)cfg["original_max_position_embeddings"]!;
                var ext = ((JsonArray)s[seqLen > original ? "long_factor" : "short_factor"]!).Select(n => (double)n!).ToArray();
                double f = maxPos / original;
                return (Plain(theta).Select((x, i) => x / ext[i]).ToArray(), f <= 1 ? 1 : Math.Sqrt(1 + Math.Log(f) / Math.Log(original)));
            }
            default: throw new NotSupportedException(type);
        }
    }
}
