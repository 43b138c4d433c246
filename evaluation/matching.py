"""Finding a term in a text: normalised characters, whole tokens, complete or partial.

Both sides are compared on normalised characters: Unicode NFC (a decomposed "é", as
some tokenizers emit it, equals the composed one) and casefold; accents are kept
unless ``MatchParams(strip_accents=True)``. Tokens are words and punctuation marks.

"Partial" is defined precisely: a contiguous run of at least ``ceil(threshold × n)``
of the term's n tokens occurs in the other text, and the run holds at least one
content token (three or more word characters, not a stop word), so a lone "of"
never matches. The longest such run wins; among equals, the leftmost. Long terms are
searched with a suffix automaton of the text, linear in both lengths.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

_TOK = re.compile(r"\w+|[^\w\s]")
STOP_WORDS = frozenset(
    "the and with for from that this was were has had have not but are its of in on at to by an a or as "
    "de del la el los las y en con por para una uno que se".split()
)
#: Terms up to this many tokens are searched run by run (cheaper than building an automaton).
_SHORT_TERM = 12


@dataclass(frozen=True)
class MatchParams:
    mode: str = "partial"  # exact | partial
    threshold: float = 0.5
    #: Compare letters without their accents ("tos" = "tós"); off: accents are part of a word.
    strip_accents: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "partial"):
            raise ValueError(f"match mode {self.mode!r} is not 'exact' or 'partial'")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"match threshold {self.threshold} is not in (0, 1]")

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1 << 18)
def norm_token(token: str, strip_accents: bool = False) -> str:
    """One token as matching sees it (its text already NFC); cached: a grid normalises the same
    few thousand words a million times."""
    token = token.casefold()
    if strip_accents:
        token = "".join(c for c in unicodedata.normalize("NFD", token) if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", token)


def norm_tokens(text: str, strip_accents: bool = False) -> tuple[str, ...]:
    return tuple(norm_token(t, strip_accents) for t in _TOK.findall(unicodedata.normalize("NFC", text)))


def _is_content(tok: str) -> bool:
    return len(tok) >= 3 and tok not in STOP_WORDS and any(c.isalnum() for c in tok)


class SuffixAutomaton:
    """Every contiguous token run of a text, for the longest run of a term it holds (linear time)."""

    def __init__(self, tokens: Sequence[str]):
        self.next: list[dict[str, int]] = [{}]
        self.link = [-1]
        self.length = [0]
        last = 0
        for tok in tokens:
            cur = len(self.length)
            self.next.append({})
            self.length.append(self.length[last] + 1)
            self.link.append(0)
            p = last
            while p != -1 and tok not in self.next[p]:
                self.next[p][tok] = cur
                p = self.link[p]
            if p != -1:
                q = self.next[p][tok]
                if self.length[p] + 1 == self.length[q]:
                    self.link[cur] = q
                else:
                    clone = len(self.length)
                    self.next.append(dict(self.next[q]))
                    self.length.append(self.length[p] + 1)
                    self.link.append(self.link[q])
                    while p != -1 and self.next[p].get(tok) == q:
                        self.next[p][tok] = clone
                        p = self.link[p]
                    self.link[q] = clone
                    self.link[cur] = clone
            last = cur

    def run_lengths(self, term: Sequence[str]) -> list[int]:
        """For each position i of ``term``: the longest run ending at i that occurs in the text."""
        out = []
        state = length = 0
        for tok in term:
            while state and tok not in self.next[state]:
                state = self.link[state]
                length = self.length[state]
            if tok in self.next[state]:
                state = self.next[state][tok]
                length += 1
            else:
                state = length = 0
            out.append(length)
        return out


class TextIndex:
    """A token sequence joined as " a b c " for fast substring search of token runs."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens = list(tokens)
        # token k starts after the leading space and every earlier token with its space
        self.starts = list(itertools.accumulate((len(t) + 1 for t in self.tokens[:-1]), initial=1))
        self.joined = " " + " ".join(self.tokens) + " " if self.tokens else " "
        self.vocab = frozenset(self.tokens)
        self._automaton: SuffixAutomaton | None = None

    @property
    def automaton(self) -> SuffixAutomaton:
        if self._automaton is None:
            self._automaton = SuffixAutomaton(self.tokens)
        return self._automaton

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


def _short_partial(term: Sequence[str], haystack: TextIndex, shortest: int) -> tuple[int, int] | None:
    n = len(term)
    present = [t in haystack.vocab for t in term]
    for length in range(n - 1, shortest - 1, -1):
        for i in range(0, n - length + 1):
            if not all(present[i : i + length]):
                continue
            run = term[i : i + length]
            if any(_is_content(t) for t in run) and haystack.contains(run):
                return (i, i + length)
    return None


def _long_partial(term: Sequence[str], haystack: TextIndex, shortest: int) -> tuple[int, int] | None:
    # Every run ending at i no longer than lengths[i] occurs; the longest qualifying run has
    # length lengths[i] for its end i (a longer one there would also hold its content token).
    lengths = haystack.automaton.run_lengths(term)
    best: tuple[int, int] | None = None
    last_content = -1
    for i, (tok, length) in enumerate(zip(term, lengths)):
        if _is_content(tok):
            last_content = i
        start = i - length + 1
        if length >= shortest and last_content >= start and (best is None or length > best[1] - best[0]):
            best = (start, i + 1)
    return best


def matched_run(term: Sequence[str], haystack: TextIndex, params: MatchParams) -> tuple[int, int] | None:
    """The part of ``term`` (token range) found in ``haystack`` under ``params``, or None."""
    n = len(term)
    if n == 0:
        return None
    if haystack.contains(term):
        return (0, n)
    if params.mode == "exact" or not any(t in haystack.vocab for t in term):
        return None
    shortest = max(1, math.ceil(params.threshold * n))
    if shortest > n - 1:
        return None
    return (_short_partial if n <= _SHORT_TERM else _long_partial)(term, haystack, shortest)
