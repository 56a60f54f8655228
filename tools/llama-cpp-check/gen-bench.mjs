// Times greedy decoding in llama.cpp (node-llama-cpp's prebuilt CPU build) for the generation comparison of README
// "Benchmarks": node gen-bench.mjs --model FILE [--prompt-tokens 64] [--tokens 64] [--threads 2] [--rounds 3]
// Prints one JSON object: the prompt's evaluation time and the decode tokens/s (median of the rounds), the same
// accounting as `axolotl-bench generate` (tokens generated after the prompt ÷ their wall time).
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) =>
    arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs, []));
const promptTokens = Number(args["prompt-tokens"] ?? 64), n = Number(args.tokens ?? 64);
const threads = Number(args.threads ?? 2), rounds = Number(args.rounds ?? 3);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });
const model = await llama.loadModel({ modelPath: args.model, gpuLayers: 0 });
const context = await model.createContext({ contextSize: promptTokens + n + 8, batchSize: 512, threads, sequences: 1 });
// Token ids 100, 101, ... as the prompt (random weights: the text does not matter, only the count).
const prompt = Array.from({ length: promptTokens }, (_, i) => 100 + i);
const results = [];
for (let r = 0; r < rounds; r++) {
    const sequence = context.getSequence();
    let first = null, count = 0;
    const start = performance.now();
    for await (const token of sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
        if (first === null) first = performance.now();
        if (++count >= n) break;
    }
    const end = performance.now();
    results.push({ prompt_s: (first - start) / 1000, decode_tokens_per_s: (count - 1) / ((end - first) / 1000) });
    sequence.dispose();
}
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(JSON.stringify({ model: args.model, threads, prompt_tokens: promptTokens, tokens: n,
    decode_tokens_per_s: median(results.map((x) => x.decode_tokens_per_s)), prompt_s: median(results.map((x) => x.prompt_s)), rounds: results }));
await context.dispose();
await model.dispose();
