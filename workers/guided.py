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

import time
from collections.abc import Sequence

import numpy as np
import torch

from nerfleet.evaluation.grammars import CLOSING, grammar_source

#: Tokens before a row's budget ends from which it closes its structure.
RESERVE = 40


def xgrammar():
    """The xgrammar module: an optional extra, so imported only once a guided request arrives."""
    try:
        import xgrammar as xgr  # the optional extra nerfleet[guided]
    except ImportError:
        raise RuntimeError("guided decoding needs xgrammar: pip install 'nerfleet[guided]'") from None
    return xgr


def warm_mask_kernel(device: torch.device, vocab_size: int) -> None:
    """Compile xgrammar's mask kernel now, on a GPU where xgrammar is installed, for each class of
    row count Triton specialises on (one row, a multiple of 16, any other). Its first call compiles:
    2.4 s on the H200 from a cold cache, then 0.1 and 0.3 s for the other classes (bench/NOTES.md,
    session 16), which fell inside a run's first guided prefill and steps. Called by every engine
    as it is made; a no-op on the CPU (xgrammar's CPU kernel compiles nothing)."""
    if device.type != "cuda":
        return
    try:
        xgr = xgrammar()
    except RuntimeError:  # no guided decoding on this worker
        return
    words = (vocab_size + 31) // 32
    for rows in (1, 16, 3):
        logits = torch.zeros(rows, vocab_size, device=device)  # the guided rows' logits are float32
        xgr.apply_token_bitmask_inplace(
            logits, torch.full((rows, words), -1, dtype=torch.int32, device=device), vocab_size=vocab_size
        )


class Grammars:
    """One tokenizer's compiled grammars, by prompt format."""

    def __init__(self, tokenizer, vocab_size: int):
        xgr = xgrammar()
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


class Masks:
    """Guided rows' masks, for both engines: the tokens the rows chose are accepted and the next
    masks filled by xgrammar's batch matcher, one threaded call each for all guided rows a step (one
    matcher call per row in Python cost ~310 us a row for v2 on Qwen2.5's tokenizer, all of it while
    the GPU waited); in a row's last :data:`RESERVE` tokens, the closing preference as tensor ops."""

    def __init__(self, grammars: Grammars, rows: int, pinned: bool = False):
        xgr = xgrammar()
        self.grammars = grammars
        self.batcher = xgr.BatchGrammarMatcher()
        self.bitmask = xgr.allocate_token_bitmask(rows, grammars.vocab_size)
        if pinned:  # copied to the GPU without a stream synchronisation; refilled only after one
            self.bitmask = self.bitmask.pin_memory()
        self.pending: list[tuple[object, int]] = []
        #: Host seconds spent accepting tokens and filling masks (the benchmarks' overhead).
        self.seconds = 0.0

    def matcher(self, fmt: str):
        xgr = xgrammar()
        return xgr.GrammarMatcher(self.grammars.compiled(fmt))

    def accept(self, matcher, token: int) -> None:
        """Record a chosen token; accepted with the others before the next mask is filled."""
        self.pending.append((matcher, token))

    def apply(self, logits, rows: Sequence[tuple[int, object, str, int]]) -> None:
        """Mask ``logits`` in place: each entry of ``rows`` is (row of ``logits``, matcher, format,
        tokens left); other rows stay as they are, and so does a row whose matcher has ended."""
        self.mask(logits, self.fill(logits.shape[0], rows))

    def fill(self, n: int, rows: Sequence[tuple[int, object, str, int]]):
        """The host's half of :meth:`apply`: the pending tokens accepted and the bitmask of ``n``
        rows filled. It reads no logits, so the continuous engine runs it while the GPU computes
        the step whose logits it will mask."""
        xgr = xgrammar()
        start = time.perf_counter()
        if self.pending:
            matchers, tokens = zip(*self.pending)
            xgr.BatchGrammarMatcher.batch_accept_token(list(matchers), list(tokens))
            self.pending.clear()
        bitmask = self.bitmask[:n]
        bitmask.fill_(-1)  # all allowed
        live = [(r, m, fmt, left) for r, m, fmt, left in rows if not m.is_terminated()]
        if live:
            indices = [r for r, *_ in live]
            self.batcher.batch_fill_next_token_bitmask([m for _, m, _, _ in live], bitmask, indices=indices)
            prefer_closing(self.grammars, bitmask, [(r, fmt) for r, _, fmt, left in live if left <= RESERVE])
        self.seconds += time.perf_counter() - start
        return bitmask

    def mask(self, logits, bitmask) -> None:
        """The device's half: ``bitmask`` applied to ``logits`` in place."""
        start = time.perf_counter()
        mask = bitmask.to(logits.device, non_blocking=True) if logits.device.type == "cuda" else bitmask
        xgrammar().apply_token_bitmask_inplace(logits, mask, vocab_size=self.grammars.vocab_size)
        self.seconds += time.perf_counter() - start


class GuidedLogits:
    """A transformers logits processor: each guided row of a ``generate`` batch masked to its
    grammar (:class:`Masks`), the others untouched; a row's budget is its own ``max_new_tokens``."""

    def __init__(self, grammars: Grammars, guides: Sequence[str | None], budgets: Sequence[int]):
        self.masks = Masks(grammars, len(guides))
        self.rows = [(i, self.masks.matcher(g), g, budgets[i]) for i, g in enumerate(guides) if g]
        self.steps = 0

    def __call__(self, input_ids, scores):
        if self.steps:
            last = input_ids[[r for r, *_ in self.rows], -1].tolist()
            for (_, matcher, _, _), token in zip(self.rows, last):
                if not matcher.is_terminated():  # a finished row only pads
                    self.masks.accept(matcher, token)
        self.masks.apply(scores, [(r, m, fmt, budget - self.steps) for r, m, fmt, budget in self.rows])
        self.steps += 1
        return scores


def prefer_closing(grammars: Grammars, bitmask, near: Sequence[tuple[int, str]]) -> None:
    """Rows near the end of their budget (``(row, format)`` pairs) keep, of their allowed tokens,
    those of the most preferred closing set that has any, so the structure ends complete."""
    for fmt in {f for _, f in near}:
        idx = torch.tensor([r for r, f in near if f == fmt])
        chosen = torch.zeros(len(idx), dtype=torch.bool)
        for closing in grammars.closing_masks(fmt):
            allowed = bitmask[idx] & closing
            take = allowed.any(dim=1) & ~chosen
            bitmask[idx[take]] = allowed[take]
            chosen |= take
