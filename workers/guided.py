"""Guided decoding: only tokens that keep each row inside its grammar (xgrammar), in ``generate``.

Why xgrammar rather than llguidance: on the same grammars, tokenizers and token sequences
(``bench/grammar_engines.py``: the gold of 20 real notes in each structure, both engines accepting
all of them) its masks cost 1.4-9x less per token (Qwen2.5's tokenizer: v2 360 against 915 us, v3
15 against 21 us; SmolLM2's: 31 against 286, 4.4 against 9.9); it compiles up front (0.2-1.1 s,
cached here) where llguidance compiles lazily; and its batch matcher fills many rows in threads.

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
        try:
            import xgrammar as xgr
        except ImportError:
            raise RuntimeError("guided decoding needs xgrammar: pip install 'nerfleet[guided]'") from None

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
    """A transformers logits processor: each guided row masked to its grammar, the others untouched.

    One call a step for the whole batch: the sampled tokens accepted and the next masks filled by
    xgrammar's batch matcher (in its own threads), the closing preference applied as tensor ops.
    """

    def __init__(self, grammars: Grammars, guides: Sequence[str | None], budgets: Sequence[int]):
        import torch
        import xgrammar as xgr

        self.grammars = grammars
        self.guides = list(guides)
        self.rows = [i for i, g in enumerate(self.guides) if g]
        self.matchers = [xgr.GrammarMatcher(grammars.compiled(self.guides[i])) for i in self.rows]
        self.budgets = torch.tensor([budgets[i] for i in self.rows])
        self.batcher = xgr.BatchGrammarMatcher()
        self.bitmask = xgr.allocate_token_bitmask(len(self.guides), grammars.vocab_size)
        self.steps = 0

    def __call__(self, input_ids, scores):
        import xgrammar as xgr

        if self.steps:
            last = input_ids[self.rows, -1].tolist()
            live = [k for k, m in enumerate(self.matchers) if not m.is_terminated()]
            if live:
                xgr.BatchGrammarMatcher.batch_accept_token([self.matchers[k] for k in live], [last[k] for k in live])
        self.bitmask.fill_(-1)  # all allowed, for rows without a grammar
        live = [k for k, m in enumerate(self.matchers) if not m.is_terminated()]  # a finished row only pads
        if live:
            rows = [self.rows[k] for k in live]
            self.batcher.batch_fill_next_token_bitmask([self.matchers[k] for k in live], self.bitmask, indices=rows)
            near = [(r, self.guides[r]) for k, r in zip(live, rows) if int(self.budgets[k]) - self.steps <= RESERVE]
            prefer_closing(self.grammars, self.bitmask, near)
        self.steps += 1
        mask = self.bitmask.to(scores.device, non_blocking=True) if scores.device.type == "cuda" else self.bitmask
        xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=self.grammars.vocab_size)
        return scores


class SlotMasks:
    """The continuous engine's guided slots: a matcher per guided request; each step, the tokens
    the slots chose are accepted and the next masks filled by xgrammar's batch matcher, in one
    threaded call each for all guided slots (one matcher call per row in Python cost a step
    ~310 us a row for v2 on Qwen2.5's tokenizer, all of it while the GPU waited)."""

    def __init__(self, grammars: Grammars, rows: int):
        import xgrammar as xgr

        self.grammars = grammars
        self.batcher = xgr.BatchGrammarMatcher()
        self.bitmask = xgr.allocate_token_bitmask(rows, grammars.vocab_size)
        self.pending: list[tuple[object, int]] = []
        #: Host seconds spent accepting tokens and filling masks (the benchmarks' overhead).
        self.seconds = 0.0

    def matcher(self, fmt: str):
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.grammars.compiled(fmt))

    def accept(self, matcher, token: int) -> None:
        """Record a chosen token; accepted with the others before the next mask is filled."""
        self.pending.append((matcher, token))

    def apply(self, logits, rows: Sequence[tuple[object, str, int]]) -> None:
        """Mask ``logits`` (one row per entry of ``rows``: matcher, format, tokens left) in place."""
        import time

        import xgrammar as xgr

        start = time.perf_counter()
        if self.pending:
            matchers, tokens = zip(*self.pending)
            xgr.BatchGrammarMatcher.batch_accept_token(list(matchers), list(tokens))
            self.pending.clear()
        bitmask = self.bitmask[: len(rows)]
        bitmask.fill_(-1)
        live = [k for k, (m, _, _) in enumerate(rows) if not m.is_terminated()]
        if live:
            self.batcher.batch_fill_next_token_bitmask([rows[k][0] for k in live], bitmask, indices=live)
            near = [(k, rows[k][1]) for k in live if rows[k][2] <= RESERVE]
            prefer_closing(self.grammars, bitmask, near)
        mask = bitmask.to(logits.device, non_blocking=True) if logits.device.type == "cuda" else bitmask
        xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=self.grammars.vocab_size)
        self.seconds += time.perf_counter() - start


def prefer_closing(grammars: Grammars, bitmask, near: Sequence[tuple[int, str]]) -> None:
    """Rows near the end of their budget (``(row, format)`` pairs) keep, of their allowed tokens,
    those of the most preferred closing set that has any, so the structure ends complete."""
    import torch

    for fmt in {f for _, f in near}:
        idx = torch.tensor([r for r, f in near if f == fmt])
        chosen = torch.zeros(len(idx), dtype=torch.bool)
        for closing in grammars.closing_masks(fmt):
            allowed = bitmask[idx] & closing
            take = allowed.any(dim=1) & ~chosen
            bitmask[idx[take]] = allowed[take]
            chosen |= take
