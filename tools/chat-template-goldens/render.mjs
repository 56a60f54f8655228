// Renders chat templates with @huggingface/jinja (the renderer transformers.js uses) and writes golden files that the
// C# engine's tests compare against character for character. Run: npm ci && node render.mjs [outDir] [extraDir...]
// extraDir: folders of *.jinja files, tokenizer_config.json files or *.snippets.json files, for checking templates that
// are not committed. A snippets file lists {name, template, context}: each template rendered once with its own variables.
import { Template } from "@huggingface/jinja";
import fs from "node:fs";
import path from "node:path";

// strftime_now reads the clock through Date: goldens are rendered at a fixed instant, in UTC, as the tests' clock is.
process.env.TZ = "UTC";
const fixedNow = Date.UTC(2024, 6, 26, 9, 5, 0);
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) {
    super(...(args.length ? args : [fixedNow]));
  }
  static now() {
    return fixedNow;
  }
};

const repo = path.resolve(import.meta.dirname, "../..");
const testdata = path.join(repo, "tests/Axolotl.Tests/testdata");
const outDir = process.argv[2] ?? path.join(testdata, "chat-templates/goldens");
const extraDirs = process.argv.slice(3);

// The tokens given to templates that do not come with a tokenizer (Axolotl's bundled ones).
const defaultTokens = { bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>", pad_token: "<pad>" };
// transformers.js passes these tokenizer_config.json entries to the template when they are set.
const specialKeys = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

function tokensOf(config) {
  const tokens = {};
  for (const key of specialKeys) {
    const v = config[key];
    if (typeof v === "string") tokens[key] = v;
    else if (v && typeof v.content === "string") tokens[key] = v.content;
  }
  return tokens;
}

function fromTokenizerConfig(file, name, sources) {
  const config = JSON.parse(fs.readFileSync(file, "utf8"));
  const ct = config.chat_template;
  if (typeof ct === "string") sources.push({ name, template: ct, special_tokens: tokensOf(config) });
  else if (Array.isArray(ct))
    for (const t of ct) sources.push({ name: `${name}@${t.name}`, template: t.template, special_tokens: tokensOf(config) });
}

function walk(dir, found = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, found);
    else found.push(p);
  }
  return found;
}

const sources = [];
const bundled = path.join(repo, "src/Axolotl/Templates/Bundled");
for (const f of fs.readdirSync(bundled).filter((f) => f.endsWith(".jinja")).sort())
  sources.push({ name: `bundled-${f.slice(0, -6)}`, template: fs.readFileSync(path.join(bundled, f), "utf8"), special_tokens: defaultTokens });
for (const f of walk(testdata).filter((f) => path.basename(f) === "tokenizer_config.json").sort())
  fromTokenizerConfig(f, path.relative(testdata, path.dirname(f)).replaceAll(path.sep, "-"), sources);
for (const dir of extraDirs)
  for (const f of walk(dir).sort()) {
    const name = path.relative(dir, f).replaceAll(path.sep, "-");
    if (f.endsWith(".jinja")) sources.push({ name, template: fs.readFileSync(f, "utf8"), special_tokens: defaultTokens });
    else if (path.basename(f) === "tokenizer_config.json") fromTokenizerConfig(f, name, sources);
    else if (f.endsWith(".snippets.json")) writeSnippets(f, name.slice(0, -".snippets.json".length));
  }

// Small templates exercising one engine feature each, rendered with their own variables.
function writeSnippets(file, name) {
  const snippets = JSON.parse(fs.readFileSync(file, "utf8"));
  const golden = { renderer: "@huggingface/jinja 0.5.11", name, cases: [] };
  for (const s of snippets) {
    const c = { snippet: s.name, template: s.template, context: s.context ?? {} };
    // Which step failed: "parse" (the lexer or parser, in new Template) or "render".
    let template;
    try {
      template = new Template(s.template);
    } catch (e) {
      c.error = String(e.message);
      c.error_kind = "parse";
    }
    if (template)
      try {
        c.expected = template.render(structuredClone(c.context));
      } catch (e) {
        c.error = String(e.message);
        c.error_kind = "render";
      }
    golden.cases.push(c);
  }
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(golden, null, 1) + "\n");
  console.log(`${name}: ${golden.cases.filter((c) => c.error).length} errors / ${golden.cases.length}`);
}
writeSnippets(path.join(testdata, "chat-templates/engine.snippets.json"), "engine-snippets");
writeSnippets(path.join(testdata, "chat-templates/edge.snippets.json"), "edge-snippets");
writeSnippets(path.join(testdata, "chat-templates/fuzz.snippets.json"), "fuzz-snippets");

const conversations = JSON.parse(fs.readFileSync(path.join(testdata, "chat-templates/conversations.json"), "utf8"));
fs.mkdirSync(outDir, { recursive: true });
for (const source of sources) {
  const golden = { renderer: "@huggingface/jinja 0.5.11", ...source, cases: [] };
  let template;
  try {
    template = new Template(source.template);
  } catch (e) {
    golden.parse_error = String(e.message);
  }
  if (template)
    for (const conv of conversations)
      for (const addGenerationPrompt of [false, true]) {
        // As transformers' apply_chat_template: tools and documents are None when not given, then special tokens, then kwargs.
        const context = {
          messages: conv.messages,
          tools: conv.tools ?? null,
          documents: null,
          add_generation_prompt: addGenerationPrompt,
          ...source.special_tokens,
          ...(conv.extra ?? {}),
        };
        const c = { conversation: conv.id, add_generation_prompt: addGenerationPrompt };
        try {
          c.expected = template.render(structuredClone(context));
        } catch (e) {
          c.error = String(e.message);
        }
        golden.cases.push(c);
      }
  fs.writeFileSync(path.join(outDir, `${source.name}.json`), JSON.stringify(golden, null, 1) + "\n");
  console.log(`${source.name}: ${golden.parse_error ? "parse error: " + golden.parse_error : golden.cases.filter((c) => c.error).length + " errors / " + golden.cases.length}`);
}
