// Removes wasm-streams' classes from the widget's wasm-bindgen glue:
//   node scripts/trim-glue.mjs GLUE.js
//
// Leptos 0.8 always brings wasm-streams (through server_fn), and
// wasm-bindgen exports its IntoUnderlying* classes to JS. The widget has no
// server functions and never creates one (no import of the glue constructs
// them), and scripts/build-widget.sh removes their wasm exports. esbuild
// cannot drop the classes by itself: each is followed by a top-level
// `if (Symbol.dispose) …` assignment, which it must keep as a side effect.
// So this takes out, for each such class, the class, that assignment and its
// FinalizationRegistry; it refuses to write anything if the glue still
// names one afterwards (wasm-bindgen changed its output: update this).
import { readFileSync, writeFileSync } from "node:fs";

const [file] = process.argv.slice(2);
let glue = readFileSync(file, "utf8");
const classes = [...glue.matchAll(/^export class (IntoUnderlying\w+) \{$/gm)].map((m) => m[1]);
if (classes.length === 0) {
  console.error(`trim-glue: no IntoUnderlying* class in ${file}; is this wasm-bindgen's glue?`);
  process.exit(1);
}
for (const name of classes) {
  const pieces = [
    // The class, to the first closing brace at the start of a line.
    new RegExp(`^export class ${name} \\{\\n[\\s\\S]*?^\\}\\n`, "m"),
    new RegExp(`^if \\(Symbol\\.dispose\\) ${name}\\.prototype\\[Symbol\\.dispose\\] = ${name}\\.prototype\\.free;\\n`, "m"),
    new RegExp(`^const ${name}Finalization = [\\s\\S]*?;\\n`, "m"),
  ];
  for (const piece of pieces) {
    if (!piece.test(glue)) {
      console.error(`trim-glue: ${name}: no match for ${piece}; wasm-bindgen's glue changed`);
      process.exit(1);
    }
    glue = glue.replace(piece, "");
  }
}
const left = glue.match(/IntoUnderlying\w*|intounderlying\w*/);
if (left) {
  console.error(`trim-glue: the glue still names ${left[0]} after trimming`);
  process.exit(1);
}
writeFileSync(file, glue);
console.log(`widget: trimmed ${classes.join(", ")} from the glue`);
