#!/usr/bin/env node
// Regenerates api-schema.d.ts, the types http-client.ts is checked against, from the API's own
// /openapi.json (SPEC 9). That route wants the bearer token like every other, and the
// openapi-typescript command sends none, so the document is fetched here with the token into a
// file first, and the openapi-typescript command (the locked version) turns that file into types.
//
// Usage: GRSAI_API_TOKEN=<token> node generate-types.mjs [--base-url http://127.0.0.1:8790]
//                                                        [--out api-schema.d.ts]
// (or `npm run types`). Exit codes: 0 written; 1 no answer, an error answer or a failed
// generation; 2 bad usage (no token).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";

const fail = (message, code = 1) => {
  process.stderr.write(`generate-types: ${message}\n`);
  process.exit(code);
};

let values;
try {
  ({ values } = parseArgs({ strict: true, allowPositionals: false, options: {
    "base-url": { type: "string", default: process.env.GRSAI_API_URL || "http://127.0.0.1:8790" },
    out: { type: "string", default: "api-schema.d.ts" },
  } }));
} catch (err) {
  fail(err.message.split("\n")[0], 2);
}
const token = process.env.GRSAI_API_TOKEN;
if (!token) fail("set GRSAI_API_TOKEN to a token made by `grsai-pipeline api token create NAME`", 2);

const url = new URL("/openapi.json", values["base-url"]);
let answer;
try {
  answer = await fetch(url, { headers: { Authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(30_000) });
} catch (err) {
  fail(`no answer from ${url}: ${err.cause?.code ?? err.cause?.message ?? err.message}`);
}
const text = await answer.text();
if (!answer.ok) {
  let detail = text;
  try {
    detail = JSON.parse(text).detail ?? text;
  } catch {}
  fail(`${url} answered ${answer.status}: ${detail}`);
}

// The command of the installed openapi-typescript, wherever npm put the package.
const require = createRequire(import.meta.url);
const manifest = require.resolve("openapi-typescript/package.json");
const bin = require(manifest).bin;
const command = join(dirname(manifest), typeof bin === "string" ? bin : bin["openapi-typescript"]);

const scratch = mkdtempSync(join(tmpdir(), "grsai-openapi-"));
try {
  const document = join(scratch, "openapi.json");
  writeFileSync(document, text);
  const made = spawnSync(process.execPath, [command, document, "--output", resolve(values.out)], {
    encoding: "utf8",
  });
  if (made.status !== 0) fail(`openapi-typescript failed:\n${made.stdout}${made.stderr}`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
console.log(`wrote ${values.out} from ${url}`);
