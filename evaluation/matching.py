"""Finding a term in a text: case-insensitive, whitespace-normalised, complete or partial.

"Partial" is defined precisely: a contiguous run of at least ``ceil(threshold × n)``
of the term's n tokens occurs in the other text, and the run holds at least one
content token (three or more word characters, not a stop word), so a lone "of"
never matches. The longest such run wins; among equals, the leftmost.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from nerfleet.evaluation.spans import Token

_TOK = re.compile(r"\w+|[^\w\s]")
STOP_WORDS = frozenset(
    "the and with for from that this was were has had have not but are its of in on at to by an a or as "
    "de del la el los las y en con por para una uno que se".split()
)


@dataclass(frozen=True)
class MatchParams:
    mode: str = "partial"  # exact | partial
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "partial"):
            raise ValueError(f"match mode {self.mode!r} is not 'exact' or 'partial'")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"match threshold {self.threshold} is not in (0, 1]")

    def as_dict(self) -> dict:
        return asdict(self)


def norm_tokens(text: str) -> tuple[str, ...]:
    return tuple(t.lower() for t in _TOK.findall(text))


def _is_content(tok: str) -> bool:
    return len(tok) >= 3 and tok not in STOP_WORDS and any(c.isalnum() for c in tok)


class TextIndex:
    """A token sequence joined as " a b c " for fast substring search of token runs."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = list(tokens)
        self.starts: list[int] = []
        parts = [" "]
        pos = 1
        for tok in self.tokens:
            self.starts.append(pos)
            parts.append(tok)
            parts.append(" ")
            pos += len(tok) + 1
        self.joined = "".join(parts)
        self.vocab = frozenset(self.tokens)

    def contains(self, run: Sequence[str]) -> bool:
        return bool(run) and f" {' '.join(run)} " in self.joined

    def occurrences(self, run: Sequence[str]) -> list[tuple[int, int]]:
        """Token ranges [i, j) where ``run`` occurs (overlapping occurrences too)."""
        if not run:
            return []
        needle = f" {' '.join(run)} "
        found = []
        pos = self.joined.find(needle)
        while pos != -1:
            i = bisect.bisect_left(self.starts, pos + 1)
            found.append((i, i + len(run)))
            pos = self.joined.find(needle, pos + 1)
        return found


def matched_run(term: Sequence[str], haystack: TextIndex, params: MatchParams) -> tuple[int, int] | None:
    """The part of ``term`` (token range) found in ``haystack`` under ``params``, or None."""
    n = len(term)
    if n == 0:
        return None
    present = [t in haystack.vocab for t in term]
    if all(present) and haystack.contains(term):
        return (0, n)
    if params.mode == "exact" or not any(present):
        return None
    shortest = max(1, math.ceil(params.threshold * n))
    for length in range(n - 1, shortest - 1, -1):
        for i in range(0, n - length + 1):
            if not all(present[i : i + length]):
                continue
            run = term[i : i + length]
            if any(_is_content(t) for t in run) and haystack.contains(run):
                return (i, i + length)
    return None


def doc_index(tokens: Sequence[Token]) -> TextIndex:
    return TextIndex([t.text.lower() for t in tokens])
