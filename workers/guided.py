"""Guided decoding: only tokens that keep each row inside its grammar (xgrammar), in ``generate``.

Why xgrammar: compared with llguidance on the same grammars and tokenizer (bench/grammar_engines.py,
bench/NOTES.md), it ships a transformers-ready token bitmask API, its masks are applied in place on
CPU and CUDA logits, and its compiled grammars are reused across requests.

Each grammar is compiled once per (tokenizer, format) and cached. A row's token budget is its own
``max_new_tokens``: in the last :data:`RESERVE` tokens the row prefers tokens that only close the
structure, so a guided answer ends complete and parses strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

from nerfleet.evaluation.grammars import CLOSING, grammar_source

#: Tokens before a row's budget ends from which it closes its structure.
RESERVE = 40


class Grammars:
    """One tokenizer's compiled grammars, by prompt format."""

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar as xgr

        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(self.info)
        self.vocab_size = vocab_size
        self._compiled: dict = {}
        self._closing: dict = {}

    def compiled(self, fmt: str):
        if fmt not in self._compiled:
            kind, source = grammar_source(fmt)
            if kind == "ebnf":
                self._compiled[fmt] = self.compiler.compile_grammar(source)
            else:
                self._compiled[fmt] = self.compiler.compile_json_schema(source, any_whitespace=False)
        return self._compiled[fmt]

    def closing_masks(self, fmt: str) -> list:
        """Bitmask rows, in order of preference, of the tokens made only of closing characters."""
        if fmt not in self._closing:
            import numpy as np
            import torch

            stops = [i for i in self.info.stop_token_ids if i < self.vocab_size]
            masks = []
            for chars in CLOSING[fmt]:
                allowed = set(chars.encode())  # no white space: a row could pad with it forever
                ids = [
                    i for i, tok in enumerate(self.info.decoded_vocab[: self.vocab_size]) if tok and set(tok) <= allowed
                ]
                bits = np.zeros((self.vocab_size + 31) // 32, dtype=np.uint32)
                for i in ids + stops:
                    bits[i // 32] |= np.uint32(1 << (i % 32))
                masks.append(torch.from_numpy(bits.view(np.int32)))
            self._closing[fmt] = masks
        return self._closing[fmt]


class GuidedLogits:
    """A transformers logits processor: each guided row masked to its grammar, the others untouched."""

    def __init__(self, grammars: Grammars, guides: Sequence[str | None], budgets: Sequence[int]):
        import xgrammar as xgr

        self.grammars = grammars
        self.guides = list(guides)
        self.budgets = list(budgets)
        self.matchers = [xgr.GrammarMatcher(grammars.compiled(g)) if g else None for g in self.guides]
        self.bitmask = xgr.allocate_token_bitmask(len(self.guides), grammars.vocab_size)
        self.steps = 0

    def __call__(self, input_ids, scores):
        import xgrammar as xgr

        if self.steps:
            for i, m in enumerate(self.matchers):
                if m is not None and not m.is_terminated():
                    m.accept_token(int(input_ids[i, -1]))
        self.bitmask.fill_(-1)  # all allowed, for rows without a grammar
        for i, m in enumerate(self.matchers):
            if m is None or m.is_terminated():  # a finished row only pads from here on
                continue
            m.fill_next_token_bitmask(self.bitmask, i)
            if self.budgets[i] - self.steps <= RESERVE:
                for closing in self.grammars.closing_masks(self.guides[i]):
                    allowed = self.bitmask[i] & closing
                    if bool(allowed.any()):
                        self.bitmask[i] = allowed
                        break
        self.steps += 1
        mask = self.bitmask.to(scores.device, non_blocking=True) if scores.device.type == "cuda" else self.bitmask
        xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=self.grammars.vocab_size)
        return scores
