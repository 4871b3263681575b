// Bundles page.jsx with React's development build (the one whose strict mode mounts twice)
// into OUTDIR/page.js beside an index.html, for tests/react.rs to open from a file: URL.
//   node web/test/react/build.mjs OUTDIR
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { build } from "esbuild";

const outdir = process.argv[2];
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: [new URL("page.jsx", import.meta.url).pathname],
  bundle: true,
  format: "iife",
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"development"' },
  outfile: join(outdir, "page.js"),
  logLevel: "warning",
});
writeFileSync(
  join(outdir, "index.html"),
  '<!doctype html><meta charset="utf-8"><title>wskafka React test</title><div id="root"></div><script src="page.js"></script>\n',
);
