// Writes random templates for differential testing against @huggingface/jinja: expressions (operators, filters, tests,
// methods, slicing over values of every type) and statement/whitespace-control soups. render.mjs renders them into
// goldens; the C# tests compare. Run: node fuzz.mjs [seed] [expressions] [soups] [out.snippets.json]
import fs from "node:fs";
import path from "node:path";

let seed = Number(process.argv[2] ?? 1);
const rnd = () => {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
};
const pick = (a) => a[Math.floor(rnd() * a.length)];

const vars = ["s", "e", "n", "f", "z", "neg", "b", "nb", "nul", "l", "ls", "d", "msgs", "nested", "missing", "ws", "uni", "num_s", "big"];
const lits = ["1", "0", "-1", "2.5", "0.0", "'a'", "''", "'Hello'", "' x '", "true", "false", "none", "[1, 2]", "[]", "{'k': 1}", "{}", "'1'", "\"q\\\"\"", "'\\n'", "[none]", "(1, 2)"];
const filters = ["trim", "upper", "lower", "title", "capitalize", "length", "tojson", "items", "join", "join(', ')", "default('x')", "default('x', true)",
  "first", "last", "list", "string", "int", "float", "abs", "unique", "reverse", "sort", "safe", "indent", "indent(2, true)", "replace('a', 'b')",
  "tojson(indent=2)", "map(attribute='role')", "selectattr('role', 'equalto', 'user')", "rejectattr('content')", "dictsort", "int(7)", "float('x')",
  "sort(reverse=true)", "tojson(sort_keys=true)", "join('-')", "count", "round", "keys", "values", "bool"];
const tests = ["defined", "undefined", "none", "string", "number", "integer", "mapping", "iterable", "sequence", "boolean", "odd", "even", "true", "false", "lower", "upper", "callable"];
const ops = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "and", "or", "in", "not in", "**"];
const methods = ["strip()", "upper()", "lower()", "split()", "split(' ')", "startswith('H')", "endswith('d')", "replace('l', 'L')", "title()", "capitalize()", "lstrip()", "rstrip()", "length", "get('k')", "items()", "keys()", "values()", "get('zz', 'dd')"];
function expr(depth) {
  const r = rnd();
  if (depth <= 0 || r < 0.25) return rnd() < 0.5 ? pick(vars) : pick(lits);
  if (r < 0.4) return `${expr(depth - 1)} ${pick(ops)} ${expr(depth - 1)}`;
  if (r < 0.52) return `${expr(depth - 1)} | ${pick(filters)}`;
  if (r < 0.6) return `${expr(depth - 1)} is ${rnd() < 0.3 ? "not " : ""}${pick(tests)}`;
  if (r < 0.66) return `(${expr(depth - 1)} if ${expr(depth - 1)} else ${expr(depth - 1)})`;
  if (r < 0.72) return `not ${expr(depth - 1)}`;
  if (r < 0.76) return `-${pick(vars)}`;
  if (r < 0.84) return `${pick(vars)}.${pick(methods)}`;
  if (r < 0.92) return `${pick(vars)}[${pick(["0", "-1", "1:", ":2", "::-1", "'k'", "'role'", "5", "1:-1", "::2"])}]`;
  return `(${expr(depth - 1)})`;
}
const context = {
  s: "Hello World", e: "", n: 3, f: 2.5, z: 0, neg: -2, b: true, nb: false, nul: null, l: [1, "a", null], ls: ["b", "A", "c"],
  d: { k: "v", n: 1, z: null, "2": "two" }, msgs: [{ role: "system", content: "S" }, { role: "user", content: "U  " }, { role: "assistant", content: null, tool_calls: [{ function: { name: "f", arguments: { a: 1.5 } } }] }],
  nested: { a: { b: [1, 2.0] } }, ws: " \t\n ", uni: "ßé👋Σ", num_s: " 42.5x", big: 1e21,
};
const ws = ["", " ", "  ", "\n", "\n\n", "\t", " \n ", "\n  ", "\r\n", "\u00a0", "x", "ab ", "%", "-", "\n\t  "];
const open = ["{%", "{%-"], close = ["%}", "-%}"], eopen = ["{{", "{{-"], eclose = ["}}", "-}}"], copen = ["{#", "{#-"], cclose = ["#}", "-#}"];
function text() { let t = ""; const k = Math.floor(rnd() * 4); for (let i = 0; i < k; i++) t += pick(ws); return t; }
function tag(body) { return pick(open) + pick([" ", "", "  "]) + body + pick([" ", "", "\n"]) + pick(close); }
function block(depth) {
  let out = "";
  const k = 1 + Math.floor(rnd() * 4);
  for (let i = 0; i < k; i++) {
    out += text();
    const r = rnd();
    if (r < 0.3) out += pick(eopen) + pick([" ", ""]) + pick(["x", "'s'", "n", "loop.index if loop is defined else 0", "ns.v", "m(1)"]) + pick([" ", ""]) + pick(eclose);
    else if (r < 0.4) out += pick(copen) + pick([" c ", "", "-", " {{ x }} "]) + pick(cclose);
    else if (r < 0.55 && depth > 0) out += tag("if " + pick(["true", "false", "x", "n > 1"])) + block(depth - 1) + (rnd() < 0.5 ? tag("else") + block(depth - 1) : "") + tag("endif");
    else if (r < 0.7 && depth > 0) out += tag("for i in " + pick(["[1, 2]", "[]", "range(3)"])) + block(depth - 1) + (rnd() < 0.3 ? tag("else") + block(depth - 1) : "") + tag("endfor");
    else if (r < 0.78) out += tag("set ns.v = ns.v ~ " + pick(["'a'", "n", "x"]));
    else if (r < 0.85 && depth > 0) out += tag("set y") + block(depth - 1) + tag("endset") + "{{ y }}";
    else if (r < 0.9 && depth > 0) out += tag("filter upper") + block(depth - 1) + tag("endfilter");
    else if (r < 0.95) out += tag("generation") + text() + tag("endgeneration");
  }
  return out + text();
}
const snippets = [];
const expressions = Number(process.argv[3] ?? 400);
for (let i = 0; i < expressions; i++) {
  const x = expr(3);
  const form = rnd();
  const template =
    form < 0.6 ? `{{ ${x} }}` : form < 0.8 ? `{% if ${x} %}Y{% else %}N{% endif %}` : `{% for it in ${x} %}[{{ it }}|{{ loop.index }}]{% else %}E{% endfor %}`;
  snippets.push({ name: `expr${i}`, template, context });
}
const soups = Number(process.argv[4] ?? 300);
for (let i = 0; i < soups; i++) {
  const template = "{% set ns = namespace(v='') %}{% macro m(a) %}<{{ a }}>{% endmacro %}" + pick(["", "\n", "  \n"]) + block(3) + pick(["", "\n", "\n\n", " "]);
  snippets.push({ name: `soup${i}`, template, context: { x: "X", n: 2 } });
}
const out = process.argv[5] ?? path.resolve(import.meta.dirname, "../../tests/Axolotl.Tests/testdata/chat-templates/fuzz.snippets.json");
fs.writeFileSync(out, JSON.stringify(snippets, null, 0).replaceAll('},{"name"', '},\n{"name"') + "\n");
