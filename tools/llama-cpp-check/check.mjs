// Loads GGUF files with llama.cpp (the prebuilt build node-llama-cpp ships) and prints JSON:
//   node check.mjs --model FILE (--tokens 1,2,3 | --prompt TEXT) [--n 32] [--score 1,2,3,...]   → one object
//   node check.mjs --jobs jobs.json   (an array of {model, tokens | prompt, n, score})          → an array of objects
// "prompt": the prompt's token ids (BOS first when the file's tokenizer.ggml.add_bos_token says so, as llama.cpp's
// tokenizer adds it); "generated": up to n tokens decoded greedily (temperature 0), stopping after an end-of-generation
// token; with score, "nll" (mean negative log-likelihood of each token of that sequence given the ones before it,
// from llama.cpp's full softmax) and "perplexity" = exp(nll). One process runs all jobs, so llama.cpp loads once.
import { readFileSync } from "node:fs";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) =>
    arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs, []));
const ids = (s) => s.split(",").filter((x) => x.length > 0).map(Number);
let jobs;
if (args.jobs) jobs = JSON.parse(readFileSync(args.jobs, "utf8"));
else if (args.model && (args.tokens || args.prompt))
    jobs = [{ model: args.model, tokens: args.tokens ? ids(args.tokens) : undefined, prompt: args.prompt, n: Number(args.n ?? 32), score: args.score ? ids(args.score) : undefined }];
else {
    console.error("usage: node check.mjs --model FILE (--tokens 1,2,3 | --prompt TEXT) [--n 32] [--score ids] | --jobs FILE");
    process.exit(2);
}

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });

async function run(job) {
    const model = await llama.loadModel({ modelPath: job.model, gpuLayers: 0 });
    const context = await model.createContext({ contextSize: 512, batchSize: 512, threads: 1, sequences: 1 });
    let prompt;
    if (job.tokens) prompt = job.tokens;
    else {
        prompt = Array.from(model.tokenize(job.prompt, false));
        if (model.fileInfo.metadata?.tokenizer?.ggml?.add_bos_token !== false && model.tokens.bos != null) prompt.unshift(model.tokens.bos);
    }
    const generated = [];
    const n = job.n ?? 32;
    if (n > 0) {
        const sequence = context.getSequence();
        for await (const token of sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
            generated.push(token);
            if (generated.length >= n || model.isEogToken(token)) break;
        }
        sequence.dispose();
    }
    const result = { model: job.model, prompt, generated };
    if (job.score) {
        const scored = job.score;
        const sequence = context.getSequence();
        const options = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } };
        const outputs = await sequence.controlledEvaluate(scored.map((t, i) => i < scored.length - 1 ? [t, { generateNext: options }] : t));
        let nll = 0;
        for (let i = 0; i + 1 < scored.length; i++) {
            const p = outputs[i]?.next?.probabilities?.get(scored[i + 1]) ?? 0;
            nll -= Math.log(Math.max(p, 1e-30));
        }
        result.nll = nll / (scored.length - 1);
        result.perplexity = Math.exp(result.nll);
        sequence.dispose();
    }
    await context.dispose();
    await model.dispose();
    return result;
}

const results = [];
for (const job of jobs) results.push(await run(job));
console.log(JSON.stringify(args.jobs ? results : results[0]));
await llama.dispose();
