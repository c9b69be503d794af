// Prints the widget bundle's size (the wasm and its JS glue, what a page
// loads): raw, gzip -9 and brotli (max quality), each file and the total.
// Usage: node scripts/bundle-size.mjs [DIR]; DIR defaults to the version
// scripts/build-widget.sh built last (build-widget/pkg/<version>).
import { readFileSync } from "node:fs";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";
import { join } from "node:path";

const dir = process.argv[2] ??
  join("build-widget/pkg", JSON.parse(readFileSync("build-widget/pkg/embed.json", "utf8")).version);
const files = ["chargeonce_bg.wasm", "chargeonce.js"];
const kb = (n) => (n / 1000).toFixed(2).padStart(7) + " KB";
const rows = files.map((name) => {
  const bytes = readFileSync(join(dir, name));
  return {
    name,
    raw: bytes.length,
    gzip: gzipSync(bytes, { level: 9 }).length,
    brotli: brotliCompressSync(bytes, {
      params: { [constants.BROTLI_PARAM_QUALITY]: 11 },
    }).length,
  };
});
const total = rows.reduce(
  (t, r) => ({ name: "total", raw: t.raw + r.raw, gzip: t.gzip + r.gzip, brotli: t.brotli + r.brotli }),
  { raw: 0, gzip: 0, brotli: 0 },
);
console.log(`${"file".padEnd(20)}${"raw".padStart(10)}${"gzip".padStart(10)}${"brotli".padStart(10)}`);
for (const r of [...rows, total]) {
  console.log(`${r.name.padEnd(20)}${kb(r.raw)}${kb(r.gzip)}${kb(r.brotli)}`);
}
