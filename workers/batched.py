"""Length-sorted, left-padded static batches through ``model.generate``; the CPU default."""

from __future__ import annotations

import time
from collections.abc import Sequence

from nerfleet.workers.engine import GenerationRequest, GenerationResult, kv_bytes_per_token, on_cuda
from nerfleet.workers.simple import SimpleEngine


class BatchedEngine(SimpleEngine):
    """Length-sorted, left-padded batches; an out-of-memory batch is split and retried."""

    name = "batched"

    def __init__(
        self,
        model,
        tokenizer,
        chat: bool | None = None,
        context: int | None = None,
        batch_size: int = 8,
        invariant: bool | None = None,
    ):
        super().__init__(model, tokenizer, chat, context, invariant)
        self.batch_size = batch_size

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        encoded = [(req, *enc) for req, enc in zip(requests, self.encode_all(requests))]
        # Longest first: an out-of-memory shows in the first batch; similar lengths pad little.
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][1]))
        results: list[GenerationResult | None] = [None] * len(encoded)
        k = 0
        while k < len(order):
            size = self.fit_batch(len(encoded[order[k]][1]), max(r.max_new_tokens for r in requests))
            self._generate_group(encoded, order[k : k + size], results)
            k += size
        return [r for r in results if r is not None]

    def fit_batch(self, prompt_len: int, max_new_tokens: int) -> int:
        """The configured batch, lowered to what the free GPU memory holds for the KV cache."""
        # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
        import torch

        if not on_cuda(self.model):
            return self.batch_size
        free, _ = torch.cuda.mem_get_info(self.model.device)
        free += self._reusable_bytes()
        per_seq = kv_bytes_per_token(self.model.config, self.model.dtype) * (prompt_len + max_new_tokens)
        return max(1, min(self.batch_size, int(0.7 * free / max(1, per_seq))))

    def _reusable_bytes(self) -> int:
        """GPU memory this engine holds but would give up for the next batch."""
        return 0

    def _generate_group(self, encoded, idx: list[int], results: list) -> None:
        # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
        import torch

        start = time.perf_counter()
        try:
            reqs = [encoded[i][0] for i in idx]
            max_new = max(r.max_new_tokens for r in reqs)
            outs = self._run(
                [encoded[i][1] for i in idx], max_new, [r.guide for r in reqs], [r.max_new_tokens for r in reqs]
            )
        except torch.OutOfMemoryError:
            if len(idx) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(idx) // 2
            self._generate_group(encoded, idx[:half], results)
            self._generate_group(encoded, idx[half:], results)
            return
        latency = (time.perf_counter() - start) / len(idx)
        for i, out in zip(idx, outs):
            req, ids, truncated = encoded[i]
            results[i] = self._result(req, ids, out[: req.max_new_tokens], truncated, latency)
