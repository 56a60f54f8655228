// Writes tests/Axolotl.Tests/testdata/tokenizer-goldens/goldens.json: for each tokenizer variant and each test string,
// the ids and decodings that Hugging Face's Rust `tokenizers` library gives (through its Node binding, the npm package
// "tokenizers", the same Rust code that transformers' fast tokenizers run). transformers.js' pure-JS
// @huggingface/tokenizers is run as a second, independent implementation; disagreements are listed in the output.
// Neither applies transformers' Python-side tokenizer_config.json handling, so the goldens are of tokenizer.json alone.
//
// Run from the repository root:  (cd tools/tokenizer-goldens && npm ci && node make_goldens.mjs)
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { Tokenizer as JsTokenizer } from '@huggingface/tokenizers';

const require = createRequire(import.meta.url);
const { Tokenizer: RustTokenizer } = require('tokenizers');
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const testdata = path.join(root, 'tests/Axolotl.Tests/testdata');
const readJson = (p) => JSON.parse(fs.readFileSync(path.join(testdata, p), 'utf8'));

// Variants: a base tokenizer.json with top-level keys replaced. The tests apply the same edits (GoldenTokenizerTests).
const variants = JSON.parse(fs.readFileSync(path.join(testdata, 'tokenizer-goldens/variants.json'), 'utf8'));
const texts = JSON.parse(fs.readFileSync(path.join(testdata, 'tokenizer-goldens/texts.json'), 'utf8'));

function llama3TokenizerJson() {
  // Llama-3's tokenizer.json is ~9 MB; it is rebuilt from its vocabulary and merges (ollama's copies) and a skeleton.
  const json = readJson('tok-llama3/tokenizer.skeleton.json');
  json.model.vocab = readJson('tok-llama3/encoder.json');
  json.model.merges = fs.readFileSync(path.join(testdata, 'tok-llama3/vocab.bpe'), 'utf8')
    .split('\n').filter((l) => l.length > 0 && !l.startsWith('#version'));
  return json;
}

const bases = {};
function base(name) {
  if (!bases[name]) bases[name] = name === 'llama3' ? llama3TokenizerJson() : readJson(`${name}/tokenizer.json`);
  return structuredClone(bases[name]);
}

const cases = [];
const disagreements = [];
for (const variant of variants) {
  const json = base(variant.base);
  Object.assign(json, variant.set ?? {});
  const rust = RustTokenizer.fromString(JSON.stringify(json));
  const js = new JsTokenizer(json, {});
  // tokenizers 0.23 decodes an added token with normalized=true as its normalized form ("▁</s>" in Llama-2) and does
  // not skip it as special; earlier versions (and this project) use its content. Such cases are flagged, and also
  // decoded by the same library from a copy whose added tokens say normalized=false (nothing else differs, and only
  // decoding uses the copy), which decodes them by their content.
  const normalizedAdded = new Set((json.added_tokens ?? []).filter((t) => t.normalized).map((t) => t.id));
  const byContent = RustTokenizer.fromString(JSON.stringify({
    ...json, added_tokens: (json.added_tokens ?? []).map((t) => ({ ...t, normalized: false })),
  }));
  for (const text of [...texts.common, ...(texts[variant.name] ?? [])]) {
    const withSpecial = await rust.encode(text, null, { addSpecialTokens: true });
    const plain = await rust.encode(text, null, { addSpecialTokens: false });
    const ids = Array.from(withSpecial.getIds());
    const idsPlain = Array.from(plain.getIds());
    const c = {
      variant: variant.name, text, ids, ids_plain: idsPlain,
      decoded: await rust.decode(ids, false), decoded_skip_special: await rust.decode(ids, true),
    };
    if (ids.some((id) => normalizedAdded.has(id))) {
      c.decodes_normalized_added_token = true;
      c.decoded_by_content = await byContent.decode(ids, false);
      c.decoded_skip_special_by_content = await byContent.decode(ids, true);
    }
    cases.push(c);
    const jsIds = js.encode(text, { add_special_tokens: true }).ids;
    if (JSON.stringify(jsIds) !== JSON.stringify(ids)) disagreements.push({ variant: variant.name, text, rust: ids, transformers_js: jsIds });
  }
}

const out = {
  generator: 'tools/tokenizer-goldens/make_goldens.mjs',
  implementation: `Hugging Face tokenizers (Rust) via npm tokenizers@${require('tokenizers/package.json').version}`,
  second_opinion: `transformers.js @huggingface/tokenizers@${JSON.parse(fs.readFileSync(new URL('./node_modules/@huggingface/tokenizers/package.json', import.meta.url))).version}`,
  disagreements_with_second_opinion: disagreements,
  cases,
};
fs.writeFileSync(path.join(testdata, 'tokenizer-goldens/goldens.json'), JSON.stringify(out, null, 1) + '\n');
console.log(`${cases.length} cases, ${disagreements.length} where transformers.js differs from the Rust library`);
