// The nearest-name rule is shared with Python and Go: tests/vectors/hints.json.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { closest } from "../src/hints.js";

const VECTORS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "tests", "vectors", "hints.json");

test("closest follows the shared vectors", () => {
  const { cases } = JSON.parse(readFileSync(VECTORS, "utf8")) as {
    cases: { word: string; choices: string[]; closest: string | null }[];
  };
  for (const c of cases) {
    assert.equal(closest(c.word, c.choices) ?? null, c.closest, `${c.word} among ${c.choices.join(", ")}`);
  }
});
