// gradserve.d.ts type-checks, and describes what gradserve.js exports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import * as gradserve from "../gradserve.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

test("gradserve.d.ts type-checks the API's usage (tsc --strict, tsconfig.json)", async () => {
  const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
  await promisify(execFile)(process.execPath, [tsc, "-p", "."], { cwd: ROOT }).catch((error) => {
    assert.fail(`tsc failed:\n${error.stdout}${error.stderr}`);
  });
});

test("every export of gradserve.js is declared", async () => {
  const { readFile } = await import("node:fs/promises");
  const declarations = await readFile(new URL("../gradserve.d.ts", import.meta.url), "utf8");
  for (const name of Object.keys(gradserve)) {
    assert.match(declarations, new RegExp(`export (const|class|function) ${name}\\b`), name);
  }
});
