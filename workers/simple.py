"""The reference engine: plain ``model.generate``, greedy, one request at a time.

It also holds what every engine does the same way: a prompt's ids (chat template or not, the
document cut to fit the context) and a result from generated ids.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Sequence

from nerfleet.evaluation.prompts import SLOT
from nerfleet.settings import get_settings
from nerfleet.workers.engine import GenerationRequest, GenerationResult, left_padded, prompt_mask


class SimpleEngine:
    """Plain ``model.generate``, greedy, one request at a time: the reference engine."""

    name = "simple"
    #: Whether this engine's kernels can be swapped for the batch-invariant ones.
    can_be_invariant = True

    def __init__(
        self, model, tokenizer, chat: bool | None = None, context: int | None = None, invariant: bool | None = None
    ):
        """``invariant`` (default: NERFLEET_BATCH_INVARIANT, else wherever the mode can run:
        :func:`nerfleet.workers.invariant.by_default`) computes each document with the
        batch-invariant kernels of :mod:`nerfleet.workers.invariant`: the same tokens alone or in
        any batch, in bf16 too."""
        self.model = model
        self.tokenizer = tokenizer
        self.chat = bool(tokenizer.chat_template) if chat is None else chat
        if self.chat and not tokenizer.chat_template:
            raise ValueError("model is registered as chat/instruct but its tokenizer has no chat template")
        self.context = context or getattr(model.config, "max_position_embeddings", None) or 4096
        if invariant is None:
            invariant = get_settings().batch_invariant
        if invariant is None:
            # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
            from nerfleet.workers.invariant import by_default

            invariant = self.can_be_invariant and by_default(model)
        if invariant and not self.can_be_invariant:
            raise ValueError(
                f"the {self.name} engine has no batch-invariant mode (its fixed slot shapes keep answers apart): "
                "use the batched engine with NERFLEET_BATCH_INVARIANT"
            )
        self.invariant = invariant
        if invariant:
            # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
            from nerfleet.workers import invariant as batch_invariant

            batch_invariant.check_available(model.device)
            batch_invariant.install(model)
            self.name = f"{self.name}+invariant"  # stored with every generation
        # deferred: guided decoding's module imports torch and numpy at its top
        from nerfleet.workers.guided import warm_mask_kernel

        # every engine on a GPU: the guided mask kernel compiles now, not in a run's first guided step
        warm_mask_kernel(model.device, model.config.get_text_config().vocab_size)

    def encode(self, req: GenerationRequest) -> tuple[list[int], bool]:
        """Prompt ids; the document is cut (and ``truncated`` set) to fit the context."""
        return self.encode_all([req])[0]

    def encode_all(self, reqs: Sequence[GenerationRequest]) -> list[tuple[list[int], bool]]:
        """:meth:`encode` for many requests with one tokenizer call (batched, in parallel in a
        fast tokenizer): the GPU waits while a batch is tokenized."""
        prompts = self._ids([req.template.replace(SLOT, req.text) for req in reqs])
        return [
            (ids, False) if len(ids) <= self.context - req.max_new_tokens else self._cut(req, len(ids))
            for req, ids in zip(reqs, prompts)
        ]

    def _cut(self, req: GenerationRequest, length: int) -> tuple[list[int], bool]:
        limit = self.context - req.max_new_tokens
        doc_ids = self.tokenizer(req.text, add_special_tokens=False)["input_ids"]
        keep = len(doc_ids) - (length - limit) - 8
        if keep <= 0:
            raise ValueError(f"prompt template alone exceeds the model's context of {self.context} tokens")
        text = self.tokenizer.decode(doc_ids[:keep])
        return self._ids([req.template.replace(SLOT, text)])[0][:limit], True

    def _ids(self, prompts: list[str]) -> list[list[int]]:
        if not prompts:
            return []
        if self.chat:
            out = self.tokenizer.apply_chat_template(
                [[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True, tokenize=True
            )
            return [list(x) for x in (out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)]
        return [list(x) for x in self.tokenizer(prompts)["input_ids"]]

    def _run(self, batch: list[list[int]], max_new_tokens: int, guides=None, budgets=None) -> list[list[int]]:
        """Greedy continuations of the rows; ``guides`` (one format or None a row) constrain rows to
        their structure, each within its own token budget (``budgets``)."""
        # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in batch)
        input_ids = left_padded(batch, width, pad).to(self.model.device)
        mask = prompt_mask(batch, width, width, self.model.device)
        extra = {}
        if guides is not None and any(guides):
            # deferred: guided decoding's module imports torch and numpy at its top
            from nerfleet.workers.guided import GuidedLogits

            extra["logits_processor"] = [GuidedLogits(self.grammars, guides, budgets or [max_new_tokens] * len(batch))]
        with torch.inference_mode(), self._kernels():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                **extra,
            )
        return self._trim(out[:, width:].tolist())

    @functools.cached_property
    def grammars(self):
        """This tokenizer's compiled grammars (compiled on first use, once per format)."""
        # deferred: guided decoding's module imports torch and numpy at its top
        from nerfleet.workers.guided import Grammars

        return Grammars(self.tokenizer, self.model.config.get_text_config().vocab_size)

    def _kernels(self):
        """The batch-invariant kernels around a generation when that mode is on."""
        if not self.invariant:
            return contextlib.nullcontext()
        # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
        from nerfleet.workers.invariant import kernels

        return kernels(self.model.device)

    def _stop_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return {e for e in (eos if isinstance(eos, list) else [eos]) if e is not None}

    def _trim(self, rows: list[list[int]]) -> list[list[int]]:
        """Each generated row up to (not including) its first EOS or pad token."""
        stop = self._stop_ids() | {self.tokenizer.pad_token_id}
        return [row[: next((i for i, t in enumerate(row) if t in stop), len(row))] for row in rows]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for req in requests:
            start = time.perf_counter()
            ids, truncated = self.encode(req)
            out = self._run([ids], req.max_new_tokens, [req.guide], [req.max_new_tokens])[0]
            results.append(self._result(req, ids, out, truncated, time.perf_counter() - start))
        return results

    def _result(self, req, ids, out, truncated, latency) -> GenerationResult:
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return GenerationResult(req.key, text, len(ids), len(out), truncated, latency)
