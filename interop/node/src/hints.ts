// Hints for error messages: the names a caller could have meant. The Python
// (ravi/_hints.py) and Go (ravi/hints.go) members apply the same rule, so one
// typo gets one suggestion in every language.

/**
 * The choice nearest to `word` by edit distance, when it is near enough to be a
 * typo (at most a third of the word's letters differ, at least one); ties go to
 * the first choice in sorted order.
 */
export function closest(word: string, choices: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = -1;
  for (const choice of [...new Set(choices)].sort()) {
    const distance = levenshtein(word, choice);
    if (bestDistance < 0 || distance < bestDistance) {
      best = choice;
      bestDistance = distance;
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

function levenshtein(a: string, b: string): number {
  const ra = [...a];
  const rb = [...b];
  let previous = Array.from({ length: rb.length + 1 }, (_, j) => j);
  for (let i = 0; i < ra.length; i++) {
    const current = [i + 1];
    for (let j = 0; j < rb.length; j++) {
      current.push(Math.min((previous[j + 1] ?? 0) + 1, (current[j] ?? 0) + 1, (previous[j] ?? 0) + (ra[i] === rb[j] ? 0 : 1)));
    }
    previous = current;
  }
  return previous[rb.length] ?? 0;
}
