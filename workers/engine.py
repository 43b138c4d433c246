"""Generation engines: ``generate(requests) -> results`` in the same order.

``SimpleEngine`` is the reference (one request at a time, plain ``model.generate``);
``BatchedEngine`` pads a length-sorted batch to the left and generates it at once.
Tasks only see the interface, so a faster engine replaces these without touching them.
"""

from __future__ import annotations

import array
import contextlib
import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nerfleet.evaluation.prompts import SLOT
from nerfleet.workers.prefill import last_position_only, last_position_refusal


@dataclass(frozen=True)
class GenerationRequest:
    key: str  # the job hash
    template: str  # prompt template with the {clinical_text} slot
    text: str  # the document
    max_new_tokens: int
    #: Decoding constrained to this structure ("dict": the v2 grammar, "json": the v3 schema), or None.
    guide: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    key: str
    output: str
    prompt_tokens: int
    output_tokens: int
    truncated: bool
    latency_s: float


class Engine(Protocol):
    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


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
            from nerfleet.settings import get_settings

            invariant = get_settings().batch_invariant
        if invariant is None:
            from nerfleet.workers.invariant import by_default

            invariant = self.can_be_invariant and by_default(model)
        if invariant and not self.can_be_invariant:
            raise ValueError(
                f"the {self.name} engine is not batch-invariant (the compiler chooses its kernels): "
                "use the batched engine with NERFLEET_BATCH_INVARIANT"
            )
        self.invariant = invariant
        if invariant:
            from nerfleet.workers import invariant as batch_invariant

            batch_invariant.check_available(model.device)
            batch_invariant.install(model)
            self.name = f"{self.name}+invariant"  # stored with every generation

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

    #: Extra arguments for ``model.generate`` (the compiled engine sets a static cache).
    generate_kwargs: dict = {}

    def _width(self, longest: int) -> int:
        return longest

    def _run(self, batch: list[list[int]], max_new_tokens: int, guides=None, budgets=None) -> list[list[int]]:
        """Greedy continuations of the rows; ``guides`` (one format or None a row) constrain rows to
        their structure, each within its own token budget (``budgets``)."""
        import torch

        pad = self.tokenizer.pad_token_id
        width = self._width(max(len(x) for x in batch))
        input_ids = left_padded(batch, width, pad).to(self.model.device)
        mask = prompt_mask(batch, width, width, self.model.device)
        extra = dict(self.generate_kwargs)
        if guides is not None and any(guides):
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
        from nerfleet.workers.guided import Grammars

        return Grammars(self.tokenizer, self.model.config.get_text_config().vocab_size)

    def _kernels(self):
        """The batch-invariant kernels around a generation when that mode is on."""
        import contextlib

        if not self.invariant:
            return contextlib.nullcontext()
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


def left_padded(batch: list[list[int]], width: int, pad: int):
    """The rows left-padded to ``width``, one int64 tensor built through a flat buffer: 4× faster
    than ``torch.tensor`` on nested lists (3 against 12 ms for 128 × 640 tokens), time the GPU
    would otherwise wait at the start of each batch."""
    import torch

    rows = (itertools.chain(itertools.repeat(pad, width - len(x)), x) for x in batch)
    flat = array.array("q", itertools.chain.from_iterable(rows))
    if not flat:
        return torch.empty(len(batch), width, dtype=torch.long)
    return torch.frombuffer(flat, dtype=torch.int64).view(len(batch), width)


def prompt_mask(batch: list[list[int]], width: int, total: int, device):
    """1 where a left-padded row of ``width`` has a prompt token, over ``total`` columns (int64)."""
    import torch

    lengths = torch.tensor([len(x) for x in batch], device=device)
    cols = torch.arange(total, device=device)
    return ((cols >= width - lengths[:, None]) & (cols < width)).long()


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def kv_heads_and_dim(config) -> tuple[int, int]:
    """Key/value heads and their width (grouped-query models have fewer than query heads)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@contextlib.contextmanager
def preferred_blas(library: str | None):
    """torch's BLAS library for the products run inside (None: unchanged), restored after."""
    import torch

    if library is None or not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def on_cuda(model) -> bool:
    """Whether ``model``'s weights are on a CUDA device: the GPU-only paths (graphs, kernels) key on it."""
    import torch

    return torch.device(model.device).type == "cuda"


def has_sliding_window(config) -> bool:
    """Whether any layer attends through a sliding window (Mistral v0.1, Gemma, Qwen2 with it on)."""
    layer_types = getattr(config, "layer_types", None) or ()
    return bool(getattr(config, "sliding_window", None)) or "sliding_attention" in layer_types


def kv_bytes_per_token(config, dtype) -> int:
    """Bytes of key and value cache one token takes over all layers."""
    import torch

    heads, head_dim = kv_heads_and_dim(config)
    width = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 2
    return 2 * config.num_hidden_layers * heads * head_dim * width


def default_decode_attention(model) -> str:
    """On CUDA the first decoding kernel that can serve the model, in the order of
    :data:`~nerfleet.workers.attention.DECODE_KERNELS`; elsewhere ``sdpa`` (the others are GPU
    kernels: Triton's interpreter and FlexAttention without compilation are far slower there)."""
    from nerfleet.workers.attention import DECODE_KERNELS, decoding_refusal

    if not on_cuda(model):
        return "sdpa"
    return next(k for k in DECODE_KERNELS if decoding_refusal(model.config, k) is None)


class CompiledEngine(BatchedEngine):
    """Batched greedy decoding with a static KV cache and the decoding step compiled (CUDA graphs).

    Plain ``generate`` spends most of each step on the host (~100 ms at batch 128 for a 7B model
    on an H100) and synchronises with the GPU at every step. Here the prompt is prefilled once,
    then each step is one compiled forward pass plus an argmax, queued without waiting; EOS is
    checked every ``check_every`` steps. Prompt widths are rounded up to ``bucket`` tokens so only
    a few shapes are ever compiled. Attention reads each live cache block once and skips the rest
    (:mod:`nerfleet.workers.attention`).
    """

    name = "compiled"
    can_be_invariant = False
    bucket = 128
    check_every = 32
    #: Compile the prefill too (no CUDA graphs: its shapes vary): fuses the norms, rotary and
    #: activations that run eagerly at full prompt width.
    compile_prefill = True
    #: Batch shapes compiled before dynamo gives up (it then runs the step eagerly).
    shape_limit = 64
    #: torch.compile's ``dynamic``: False compiles each batch shape apart (the measured setting);
    #: None and True share compiled code between shapes (``bench/compile_shapes.py``).
    compile_dynamic: bool | None = False
    #: Run the prefill's last layer after its attention at the last position only
    #: (:mod:`nerfleet.workers.prefill`), where the model's layers allow it.
    last_position_prefill = True
    #: torch.compile's ``mode`` for the prefill (None: inductor's default; no CUDA graphs either
    #: way, its shapes vary). ``max-autotune-no-cudagraphs`` times Triton templates against cuBLAS
    #: for each product, at minutes of compilation.
    prefill_compile_mode: str | None = None
    #: With fused projections, weights stored transposed in memory (:func:`nerfleet.workers.fusion.fuse`):
    #: cuBLAS then picks faster kernels for the decoding step's thin products (``bench/decode_products.py``;
    #: with ``step_blas`` below, Mistral-7B's step 11.80 → 11.33 ms on an H100, ``bench/NOTES.md``).
    column_major_weights = True
    #: torch's BLAS library (``cublas``, ``cublaslt``; None: torch's setting) for the prefill's and the
    #: decoding step's products, set around each: the step's CUDA graph keeps the kernels it captured.
    #: cuBLASLt runs the step's down product without cuBLAS's separate split-K reduction (46 vs 54 µs).
    #: Inductor's autotuned Triton products were slower for the step (``bench/decode_products.py``) and
    #: kept cuBLAS for every prefill product (``bench/NOTES.md``, session 8), so neither is offered.
    prefill_blas: str | None = None
    step_blas: str | None = "cublaslt"
    #: Keep the attention mask in one tensor per batch shape at a fixed address, so the step's CUDA
    #: graph reads it in place instead of copying a new one in at every step: the 17 µs
    #: ``multi_tensor_apply`` copy a step of the session 8 profile is 1.3 µs with it (session 9,
    #: ``bench/results/profile-h100-mistral-static-mask.txt``).
    static_step_mask = True
    #: The rotary embedding's cos and sin computed once per forward pass instead of inside every
    #: layer's rotary kernels, for every head and element (:mod:`nerfleet.workers.rotary`).
    materialize_rotary = True

    def __init__(self, *args, decode_attention: str | None = None, fuse_projections: bool | None = None, **kwargs):
        """The decoding step's attention (``triton``, ``flex`` or ``sdpa``) from the argument, else
        the settings (NERFLEET_DECODE_ATTENTION), else :func:`default_decode_attention`.
        ``fuse_projections`` (default NERFLEET_FUSE_PROJECTIONS, else on CUDA where the model
        allows it) runs the model as its fused form (:func:`nerfleet.workers.fusion.fuse`), which
        shares the weights of the model passed in."""
        from nerfleet.settings import get_settings
        from nerfleet.workers.attention import install
        from nerfleet.workers.fusion import fuse, fusion_refusal

        super().__init__(*args, **kwargs)
        if fuse_projections is None:
            fuse_projections = get_settings().fuse_projections
        if fuse_projections is None:
            fuse_projections = on_cuda(self.model) and fusion_refusal(self.model) is None
        if fuse_projections:
            self.model = fuse(self.model, column_major=self.column_major_weights)

        self.decode_attention = (
            decode_attention or get_settings().decode_attention or default_decode_attention(self.model)
        )
        install(self.model, decode=self.decode_attention)  # refuses a kernel that cannot serve the model
        if self.materialize_rotary:
            from nerfleet.workers.rotary import materialize_rotary

            materialize_rotary(self.model)
        if self.decode_attention == "flex":
            import torch._inductor.config

            # Off in every run measured on the GPU: it was turned off while a flex decoding kernel
            # failed to compile on torch 2.11 (NameError XBLOCK); the cause proved to be a mask
            # derived inside the graph (see attention.block_mask), but the setting stayed as measured.
            torch._inductor.config.prologue_fusion = False
        self._step = None
        self._prefill = None
        self._cache = None
        self._mask = None
        self._last_position = self.last_position_prefill and last_position_refusal(self.model) is None
        import torch._dynamo.config

        # Each batch shape (rows, bucketed width) is compiled once; a worker meets many over a run.
        # Past dynamo's limit (8 by default) it would silently run the step uncompiled.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, self.shape_limit)

    def _width(self, longest: int) -> int:
        return round_up(longest, self.bucket)

    def _compiled_step(self):
        if self._step is None:
            if on_cuda(self.model):
                from transformers import CompileConfig

                self._step = self.model.get_compiled_call(
                    CompileConfig(fullgraph=False, mode="reduce-overhead", dynamic=self.compile_dynamic)
                )
            else:
                self._step = self.model.__call__
        return self._step

    def _cache_for(self, n: int, total: int):
        """One static cache, reused while the batch shape stays (its fixed addresses keep the CUDA
        graphs valid); allocated outside any compiled code, else the step cannot be graphed."""
        from transformers import StaticCache

        key = (n, total)
        if self._cache is not None and self._cache[0] == key:
            self._cache[1].reset()
            return self._cache[1]
        self._cache = None  # free the old one before allocating
        cache = StaticCache(config=self.model.config, max_cache_len=total)
        if self._prefill_compilable():
            heads, head_dim = kv_heads_and_dim(self.model.config)
            cache.early_initialization(n, heads, head_dim, self.model.dtype, self.model.device)
        self._cache = (key, cache)
        return cache

    def _static_mask(self, mask):
        """``mask`` copied into the tensor kept for its shape; a batch of a new shape keeps its own."""
        import torch

        if self._mask is None or self._mask.shape != mask.shape:
            self._mask = mask
            torch._dynamo.mark_static_address(mask)
            return mask
        return self._mask.copy_(mask)

    def _reusable_bytes(self) -> int:
        if self._cache is None:
            return 0
        tensors = [t for layer in getattr(self._cache[1], "layers", []) for t in (layer.keys, layer.values)]
        tensors.append(self._mask)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _prefill_compilable(self) -> bool:
        """Compiling the prefill needs a cache initialised beforehand (transformers ≥ 4.56)."""
        from transformers import StaticCache

        return self.compile_prefill and on_cuda(self.model) and hasattr(StaticCache, "early_initialization")

    def _compiled_prefill(self):
        if not self._prefill_compilable():
            return self.model.__call__
        if self._prefill is None:
            import torch

            # a frame apart from the step's
            self._prefill = torch.compile(
                self.model.forward, dynamic=self.compile_dynamic, mode=self.prefill_compile_mode
            )
        return self._prefill

    def _run(self, batch: list[list[int]], max_new_tokens: int, guides=None, budgets=None) -> list[list[int]]:
        if guides is not None and any(guides):
            raise ValueError("guided decoding runs in the simple and batched engines, not the compiled one")
        import torch

        model, pad = self.model, self.tokenizer.pad_token_id
        dev = model.device
        n, width = len(batch), self._width(max(len(x) for x in batch))
        total = width + max_new_tokens
        if self.decode_attention == "flex":  # whole cache blocks: the block mask needs no padding
            from nerfleet.workers.attention import KV_BLOCK

            total = round_up(total, KV_BLOCK)
        ids = left_padded(batch, width, pad).to(dev)
        mask = prompt_mask(batch, width, total, dev)
        if self.static_step_mask:
            mask = self._static_mask(mask)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        eos_ids = torch.tensor(sorted(self._stop_ids()) or [-1], device=dev)
        out = torch.full((n, max_new_tokens), pad, dtype=torch.long, device=dev)
        finished = torch.zeros(n, dtype=torch.bool, device=dev)
        with torch.inference_mode():
            cache = self._cache_for(n, total)  # its tensors are inference tensors, reset in this mode
            with (
                last_position_only(model) if self._last_position else contextlib.nullcontext(),
                preferred_blas(self.prefill_blas),
            ):
                logits = self._compiled_prefill()(
                    input_ids=ids,
                    # no padding: no mask, and the prefill's attention is causal over the prompt only
                    attention_mask=None if all(len(x) == width for x in batch) else mask,
                    position_ids=positions,
                    past_key_values=cache,
                    cache_position=torch.arange(width, device=dev),
                    use_cache=True,
                    logits_to_keep=1,
                ).logits
            token = logits[:, -1].argmax(-1)
            pos = positions[:, -1:] + 1
            step = self._compiled_step()
            steps = torch.arange(width, total, device=dev)  # cache positions, sliced without a host copy
            with preferred_blas(self.step_blas):  # the step's graph keeps the kernels it captured
                for i in range(max_new_tokens):
                    token = torch.where(finished, pad, token)
                    out[:, i] = token
                    finished |= torch.isin(token, eos_ids)
                    if i + 1 == max_new_tokens or ((i + 1) % self.check_every == 0 and bool(finished.all())):
                        break
                    mask[:, width + i] = 1
                    logits = step(
                        input_ids=token[:, None],
                        attention_mask=mask,
                        position_ids=pos + i,
                        past_key_values=cache,
                        cache_position=steps[i : i + 1],
                        use_cache=True,
                    ).logits
                    token = logits[:, -1].argmax(-1)
        return self._trim(out.tolist())
