"""Hints for error messages: the closest of the names a user could have meant.

The Go and Node members apply the same rule (`interop/go/ravi/hints.go`,
`interop/node/src/hints.ts`), so one typo gets one suggestion in every language.
"""

from __future__ import annotations

from collections.abc import Iterable


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to `word` by edit distance, if it is near enough to be a typo.

    Near enough: at most a third of the word's letters differ (at least one),
    a swap of two neighbouring letters counting as one. Ties go to the first
    choice in sorted order.
    """
    best: tuple[int, str] | None = None
    for choice in sorted(set(choices)):
        distance = _distance(word, choice)
        if best is None or distance < best[0]:
            best = (distance, choice)
    if best is None or best[0] > max(1, len(word) // 3) or best[1] == word:
        return None
    return best[1]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "X"?)' for the closest choice, or nothing."""
    found = closest(word, choices)
    return f' (did you mean "{found}"?)' if found is not None else ""


def not_registered(agent_type: str, registered: Iterable[str]) -> str:
    """The message of AgentTypeNotFound on a runtime that knows every type it can reach."""
    known = sorted(registered)
    return (
        f'no agent type "{agent_type}" is registered{did_you_mean(agent_type, known)}; '
        f"registered: {', '.join(known) or 'none'}"
    )


def _distance(a: str, b: str) -> int:
    """Edits from a to b: insert, delete, replace, or swap two neighbours (each one)."""
    rows = [list(range(len(b) + 1))]
    for i, x in enumerate(a, start=1):
        row = [i]
        for j, y in enumerate(b, start=1):
            cost = min(rows[i - 1][j] + 1, row[j - 1] + 1, rows[i - 1][j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                cost = min(cost, rows[i - 2][j - 2] + 1)
            row.append(cost)
        rows.append(row)
    return rows[-1][-1]
