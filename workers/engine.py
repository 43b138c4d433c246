"""What every engine shares: the request and result of one job, the engine protocol, and the
tensor and memory helpers the engines use.

The engines, each in its module: :mod:`~nerfleet.workers.simple` (the reference, one request at a
time), :mod:`~nerfleet.workers.batched` (length-sorted static batches) and
:mod:`~nerfleet.workers.continuous` (slots refilled as answers end; the default on CUDA). Tasks
only see the protocol, so an engine replaces another without touching them.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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


def left_padded(batch: list[list[int]], width: int, pad: int):
    """The rows left-padded to ``width``, one int64 tensor built through a flat buffer: 4× faster
    than ``torch.tensor`` on nested lists (3 against 12 ms for 128 × 640 tokens), time the GPU
    would otherwise wait at the start of each batch."""
    # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
    import torch

    rows = (itertools.chain(itertools.repeat(pad, width - len(x)), x) for x in batch)
    flat = array.array("q", itertools.chain.from_iterable(rows))
    if not flat:
        return torch.empty(len(batch), width, dtype=torch.long)
    return torch.frombuffer(flat, dtype=torch.int64).view(len(batch), width)


def prompt_mask(batch: list[list[int]], width: int, total: int, device):
    """1 where a left-padded row of ``width`` has a prompt token, over ``total`` columns (int64)."""
    # deferred: torch (2 s): Flower imports the app's task modules, and through them this one
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


def on_cuda(model) -> bool:
    """Whether ``model``'s weights are on a CUDA device: the GPU-only paths (graphs, kernels) key on it."""
    return str(model.device).startswith("cuda")


def engine_counters(engine) -> dict:
    """What an engine did in this process's life (its ``stats``: steps, prefills, tokens; empty for
    an engine that keeps none), with the CUDA caching allocator's counts when CUDA is in use: its
    retries (it ran short, freed every cached block and allocated again, the device synchronised)
    and its calls to the device's own allocator."""
    stats = getattr(engine, "stats", None)
    if not stats:
        return {}
    import torch  # deferred: the task modules import this one and must load without torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return dict(stats)
    memory = torch.cuda.memory_stats()
    return {
        **stats,
        "alloc_retries": memory.get("num_alloc_retries", 0),
        "device_allocs": memory.get("num_device_alloc", 0),
        "device_frees": memory.get("num_device_free", 0),
    }


def has_sliding_window(config) -> bool:
    """Whether any layer attends through a sliding window (Mistral v0.1, Gemma, Qwen2 with it on)."""
    layer_types = getattr(config, "layer_types", None) or ()
    return bool(getattr(config, "sliding_window", None)) or "sliding_attention" in layer_types


def kv_bytes_per_token(config, dtype) -> int:
    """Bytes of key and value cache one token takes over all layers."""
    heads, head_dim = kv_heads_and_dim(config)
    width = dtype.itemsize if dtype.is_floating_point else 2
    return 2 * config.num_hidden_layers * heads * head_dim * width
