// Hints for error messages: the names a caller could have meant. The Python
// (ravi/_hints.py) and Go (ravi/hints.go) members apply the same rule, so one
// typo gets one suggestion in every language.

/**
 * The choice nearest to `word` by edit distance, when it is near enough to be a
 * typo (at most a third of the word's letters differ, at least one, a swap of two
 * neighbours counting as one); ties go to the first choice in sorted order.
 */
export function closest(word: string, choices: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = -1;
  for (const choice of [...new Set(choices)].sort()) {
    const d = distance(word, choice);
    if (bestDistance < 0 || d < bestDistance) {
      best = choice;
      bestDistance = d;
    }
  }
  if (best === undefined || best === word || bestDistance > Math.max(1, Math.floor([...word].length / 3))) {
    return undefined;
  }
  return best;
}

/** ` (did you mean "X"?)` for the closest choice, or "". */
export function didYouMean(word: string, choices: Iterable<string>): string {
  const found = closest(word, choices);
  return found === undefined ? "" : ` (did you mean "${found}"?)`;
}

/** Edits from a to b: insert, delete, replace, or swap two neighbours (each one). */
function distance(a: string, b: string): number {
  const ra = [...a];
  const rb = [...b];
  const rows: number[][] = [Array.from({ length: rb.length + 1 }, (_, j) => j)];
  for (let i = 1; i <= ra.length; i++) {
    const row = [i];
    const above = rows[i - 1] ?? [];
    for (let j = 1; j <= rb.length; j++) {
      let cost = Math.min((above[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (above[j - 1] ?? 0) + (ra[i - 1] === rb[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && ra[i - 1] === rb[j - 2] && ra[i - 2] === rb[j - 1]) {
        cost = Math.min(cost, (rows[i - 2]?.[j - 2] ?? 0) + 1);
      }
      row.push(cost);
    }
    rows.push(row);
  }
  return rows[ra.length]?.[rb.length] ?? 0;
}
