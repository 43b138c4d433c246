"""The continuous engine's parts that are not its loop: its configuration, the records of calls
and requests in flight, how many slots fit, and the compiled step (prefill layers compiled once,
the decoding step captured as one CUDA graph)."""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nerfleet.workers.engine import GenerationRequest, GenerationResult
from nerfleet.workers.packing import Packing, pack


@dataclass(frozen=True)
class SlotConfig:
    """How a :class:`ContinuousEngine` uses its GPU (the benchmarks pass their variants in here)."""

    #: Slots (requests decoded at once); None: as many as ``memory_fraction`` of free memory holds,
    #: at most ``max_slots``.
    slots: int | None = None
    max_slots: int = 512
    #: Cache positions per slot (prompt + answer); None: the model's context, at most 4,096.
    slot_len: int | None = None
    #: Share of the GPU's memory this worker may hold, its weights included: several workers on
    #: one GPU each take their share (NERFLEET_GPU_MEMORY_FRACTION), whatever order they start in.
    memory_fraction: float = 0.9
    #: Prompt tokens (packed end to end) and prompts per prefill call.
    prefill_tokens: int = 65536
    prefill_rows: int = 128
    #: Decoding steps between looks at the tokens (one host synchronisation each look).
    check_every: int = 8
    #: Prompt prefixes kept (a prompt template's tokens before its note, each computed once), and
    #: the longest kept: a prefill copies a request's prefix keys and values instead of
    #: computing them. 0 entries: every prompt prefilled whole (NERFLEET_KEPT_PREFIXES).
    prefix_entries: int = 0
    prefix_len: int = 384
    #: Compile the step and capture it as a CUDA graph; None: on CUDA.
    graph: bool | None = None


@dataclass
class Call:
    """One :meth:`ContinuousEngine.generate` call waiting for its results."""

    results: list
    left: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def deliver(self, index: int, result: GenerationResult) -> None:
        self.results[index] = result
        self.left -= 1
        if self.left == 0:
            self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


@dataclass
class SlotRequest:
    req: GenerationRequest
    ids: list[int]
    truncated: bool
    call: Call
    index: int
    budget: int
    arrived: float
    out: list[int] = field(default_factory=list)
    matcher: object | None = None  # xgrammar's GrammarMatcher for a guided request
    #: The kept prefix its prompt starts with: (entry, length); None: none (yet), prefilled whole.
    prefix: tuple[int, int] | None = None


@dataclass
class Window:
    """Decoding steps queued on the GPU whose tokens the host has not read yet: how many steps,
    which request each slot held when they were queued, and the host buffer their tokens land in."""

    steps: int
    held: list[SlotRequest | None]
    tokens: StagedTokens


class StagedTokens:
    """Tokens copied to the host behind an event of their own: the host reads them without waiting
    for the work queued after them (the next step's forward, the next window). On the CPU, a copy."""

    def __init__(self, size: int, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.empty(size, dtype=torch.long, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.shape = torch.Size([0])

    def stage(self, tokens: torch.Tensor) -> None:
        self.shape = tokens.shape
        self.host[: tokens.numel()].copy_(tokens.reshape(-1), non_blocking=self.cuda)
        if self.event is not None:
            self.event.record()

    def read(self) -> list:
        if self.event is not None:
            self.event.synchronize()
        return self.host[: self.shape.numel()].view(self.shape).tolist()


class CompiledStep:
    """What :class:`~nerfleet.workers.continuous.ContinuousEngine` compiles at start, none of it
    during a run: the prefill's decoder layers (one compiled forward for all of them and any shape)
    and the decoding step (compiled, then captured as one CUDA graph)."""

    def _pack(self, prompts, kept, slots, entries=None) -> Packing:
        """These prompts packed into these slots of this engine's cache (:func:`pack`)."""
        _, heads, length, _ = self.keys[0].shape
        return pack(prompts, kept, slots, entries, self.model.device, heads * length)

    def _compile_prefill(self) -> None:
        """The prefill's decoder layers compiled once for all of them and for any number of packed
        tokens (regional compilation: the layers share their code; the attention stays outside),
        now, on dummy prompts written into a slot that holds nothing yet: one token (the compiler
        specialises a size of 1) and two longer ones (the second finds the first's code)."""
        engine = self

        def forward(layer, *args, **kwargs):
            if engine._prefilling:
                return compiled(layer, *args, **kwargs)
            return type(layer).forward(layer, *args, **kwargs)

        layers = self.decoder.layers
        compiled = torch.compile(type(layers[0]).forward, dynamic=True)
        for layer in layers:
            layer.forward = types.MethodType(forward, layer)
        for tokens in (1, 32, 64):
            if tokens <= self.slot_len:
                self._prefill_forward(self._pack([[0] * tokens], [0], [0]))

    def _capture(self) -> Callable[[], None]:
        """The step compiled and captured as one CUDA graph (warmed up on a side stream first)."""
        if not self.graph:
            return self._step
        self._compile_prefill()

        step = torch.compile(self._step, fullgraph=False, dynamic=False)
        saved = (self.tokens.clone(), self.positions.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), cublaslt():
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with cublaslt(), torch.cuda.graph(graph):
            step()
        self.tokens.copy_(saved[0])
        self.positions.copy_(saved[1])
        return graph.replay


def slots_that_fit(free: int, total: int, held: int, fraction: float, reserve: int, per_slot: int, most: int) -> int:
    """Slots whose caches fit in this worker's share of the GPU (``fraction`` of ``total``, less
    what it already ``held``: the weights), within what is ``free`` now, after ``reserve`` bytes
    for the prefill; at most ``most``. Too little memory for one slot is a one-line error."""
    budget = min(free, fraction * total - held) - reserve
    fits = int(budget // per_slot)
    if fits < 1:
        raise torch.OutOfMemoryError(
            f"not one slot of {per_slot / 2**20:.0f} MiB fits: {free / 2**30:.1f} GiB free, a share of "
            f"{fraction:.2f} of {total / 2**30:.0f} GiB with {held / 2**30:.1f} GiB held; raise "
            "NERFLEET_GPU_MEMORY_FRACTION or lower NERFLEET_SLOT_LEN"
        )
    return min(most, fits)


@contextlib.contextmanager
def cublaslt():
    """cuBLASLt for the products captured in the step's graph (the graph keeps the kernels it
    captured): it runs a decoding step's thin down product without cuBLAS's separate split-K
    reduction (46 against 54 us for Mistral-7B on an H100, bench/NOTES.md, session 8)."""
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def no_mask(*args, **kwargs):
    """The slot attention builds its own masks from the slots' bounds: transformers builds none."""
    return None
