// Bundles the SDK (with @bufbuild/protobuf's wire codec, the vendored zstd
// decoder and its dictionary) into one minified ES module, dist/danmaku.min.js,
// which the player page (web/) loads without a build step at run time.
// `--check` fails when the committed bundle is not what the sources build to.
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { gzipSync } from "node:zlib";

const out = new URL("../dist/danmaku.min.js", import.meta.url);
const result = await build({
  entryPoints: [new URL("../src/index.js", import.meta.url).pathname],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022"],
  platform: "browser",
  legalComments: "none",
  write: false,
});
const code = "// @danmaku/sdk bundle, built by sdk/js/scripts/build.mjs (npm run build). Do not edit.\n" + result.outputFiles[0].text;
if (process.argv.includes("--check")) {
  let committed = "";
  try {
    committed = readFileSync(out, "utf8");
  } catch { /* missing */ }
  if (committed !== code) {
    console.error("sdk/js/dist/danmaku.min.js is stale: run `npm run build` in sdk/js and commit it");
    process.exit(1);
  }
} else {
  mkdirSync(new URL("../dist/", import.meta.url), { recursive: true });
  writeFileSync(out, code);
}
const bytes = Buffer.byteLength(code);
console.log(`dist/danmaku.min.js: ${bytes} bytes minified, ${gzipSync(code, { level: 9 }).length} bytes gzip -9`);
