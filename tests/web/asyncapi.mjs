// Validates an AsyncAPI document with the reference parser (@asyncapi/parser): the
// schema, every $ref, and the spec's semantic rules. Usage: node asyncapi.mjs FILE_OR_URL
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const source = process.argv[2];
if (!source) {
  console.error("usage: node asyncapi.mjs FILE_OR_URL");
  process.exit(2);
}
const text = /^https?:/.test(source)
  ? await (await fetch(source)).text()
  : await readFile(source, "utf8");
const { document, diagnostics } = await new Parser().parse(text);
// Severity 0 is an error, 1 a warning; hints (2, 3) are style suggestions.
const problems = diagnostics.filter((d) => d.severity <= 1);
for (const d of problems) {
  const level = d.severity === 0 ? "error" : "warning";
  console.error(`${level}: ${d.message} at ${d.path.join(".") || "(root)"}`);
}
if (!document || problems.length > 0) {
  console.error(`${source}: INVALID (${problems.length} problems)`);
  process.exit(1);
}
console.log(
  `${source}: valid AsyncAPI ${document.version()}, ` +
    `${document.channels().length} channels, ${document.operations().length} operations, ` +
    `${document.messages().length} messages`,
);
