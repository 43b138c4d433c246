"""Prompt prefixes kept on the GPU: a template's tokens before its note, computed once.

Every job of a prompt starts with the same tokens (the chat template's head and the prompt's
instructions up to ``{clinical_text}``): 11% of the study's prompt tokens with the real
SmolLM2's tokenizer (``bench/prefix_share.py``), 28% with the random 7B's (its fleet run,
bench/NOTES.md). The continuous engine keeps their keys and values here, one entry per template,
and a prefill copies a request's prefix into its slot and computes only the rest (vLLM's prefix
caching, at the granularity this workload needs: whole templates, not pages).

The prefix of a template is found, not assumed: the longest run of tokens that two or more waiting
prompts of it share (a tokenizer may merge the template's last characters with the note's first),
and a prompt that does not start with its template's kept prefix is prefilled whole.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch

#: Shorter shared runs are not kept: the copy and the bookkeeping would cost more than they save.
MIN_PREFIX = 16


def shared_prefix(prompts: Sequence[Sequence[int]], longest: int) -> int:
    """How many leading tokens all these prompts share, leaving each at least one of its own (a
    prefill needs one position to take its first logits from), at most ``longest``."""
    n = min(min(len(p) for p in prompts) - 1, longest)
    first = prompts[0]
    for k in range(n):
        if any(p[k] != first[k] for p in prompts[1:]):
            return k
    return max(n, 0)


class PrefixStore:
    """Up to ``entries`` prefixes of up to ``length`` tokens, the least recently used given up first."""

    def __init__(self, entries: int, length: int, layers: int, shape: tuple[int, int], dtype, device):
        heads, head_dim = shape
        size = (entries, heads, length, head_dim)
        self.keys = [torch.zeros(size, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(size, dtype=dtype, device=device) for _ in range(layers)]
        self.length = length
        self._entries = entries
        self._kept: collections.OrderedDict[str, tuple[int, list[int]]] = collections.OrderedDict()
        self._none: set[str] = set()  # templates whose prompts share too short a run to keep

    def match(self, waiting: Sequence) -> list[tuple[int, list[int]]]:
        """Each waiting request's kept prefix (its ``prefix``: entry, length). A template seen in
        two or more of them with a long enough shared run gets an entry at once: those are
        returned, as (entry, prefix ids), for the caller to compute before its next prefill."""
        unknown: dict[str, list] = collections.defaultdict(list)
        for item in waiting:
            template = item.req.template
            if item.prefix is None and template not in self._none:
                item.prefix = self.find(template, item.ids)
                if item.prefix is None and template not in self._kept:
                    unknown[template].append(item)
        new = []
        for template, items in unknown.items():
            if len(items) < 2:
                continue
            length = shared_prefix([x.ids for x in items[:8]], self.length)
            if length < MIN_PREFIX:
                self._none.add(template)
            else:
                new.append((self.reserve(template, items[0].ids[:length]), items[0].ids[:length]))
                for item in items:
                    item.prefix = self.find(template, item.ids)
        return new

    def find(self, template: str, ids: Sequence[int]) -> tuple[int, int] | None:
        """(entry, length) of the kept prefix these prompt ids start with, if any."""
        kept = self._kept.get(template)
        if kept is None:
            return None
        entry, prefix = kept
        if len(ids) <= len(prefix) or list(ids[: len(prefix)]) != prefix:
            return None
        self._kept.move_to_end(template)
        return entry, len(prefix)

    def reserve(self, template: str, prefix: list[int]) -> int:
        """An entry for this template's prefix (whose keys and values the caller then writes)."""
        if template in self._kept:
            entry = self._kept.pop(template)[0]
        elif len(self._kept) < self._entries:
            entry = len(self._kept)
        else:
            _, (entry, _) = self._kept.popitem(last=False)
        self._kept[template] = (entry, list(prefix))
        return entry
