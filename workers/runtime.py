"""The one model a worker process holds, loaded once at start, with its engine."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from nerfleet.registry import Registry
from nerfleet.settings import get_settings
from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.engine import Engine, on_cuda
from nerfleet.workers.models import ModelSpec, load
from nerfleet.workers.simple import SimpleEngine

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    spec: ModelSpec
    engine: Engine
    worker: str
    host: str
    gpu: str | None


_current: Runtime | None = None


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("this worker process holds no model: start it with `nerfleet worker --model M`")
    return _current


def _simple(model, tokenizer, spec: ModelSpec, batch_size: int) -> Engine:
    return SimpleEngine(model, tokenizer, chat=spec.chat)


def _batched(model, tokenizer, spec: ModelSpec, batch_size: int) -> Engine:
    return BatchedEngine(model, tokenizer, chat=spec.chat, batch_size=batch_size)


def _continuous(model, tokenizer, spec: ModelSpec, batch_size: int) -> Engine:
    # deferred: an engine's module when it is named (this one compiles triton kernels)
    from nerfleet.workers.continuous import ContinuousEngine, SlotConfig

    s = get_settings()
    config = SlotConfig(
        slots=s.slots, slot_len=s.slot_len, memory_fraction=s.gpu_memory_fraction, prefix_entries=s.kept_prefixes
    )
    return ContinuousEngine(model, tokenizer, chat=spec.chat, batch_size=batch_size, config=config)


#: ``nerfleet worker --engine``: the engines by name, each a factory (``auto``: continuous on CUDA,
#: else batched); ``module:Class`` names a class of one's own taking BatchedEngine's arguments.
ENGINES: Registry[Callable[..., Engine]] = Registry(
    "engine", {"continuous": _continuous, "batched": _batched, "simple": _simple}
)


def engine_kind(kind: str, cuda: bool) -> str:
    """The engine ``kind`` names on this device (``auto`` resolved)."""
    if kind == "auto":
        return "continuous" if cuda else "batched"
    return kind


def make_engine(kind: str, model, tokenizer, spec: ModelSpec, batch_size: int) -> Engine:
    """An engine of :data:`ENGINES` (or ``auto``), or 'module:Class'."""
    kind = engine_kind(kind, on_cuda(model))
    if ":" in kind:
        module, _, attr = kind.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(model, tokenizer, chat=spec.chat, batch_size=batch_size)
    return ENGINES[kind](model, tokenizer, spec, batch_size)


def tasks_in_flight(engine: Engine, batch_size: int) -> int:
    """Generate tasks a worker runs at once: one for an engine that takes one batch at a time;
    for one with slots, enough messages in hand to keep every slot busy while others are stored."""
    slots = getattr(engine, "slots", None)
    if not slots:
        return 1
    return max(2, min(64, -(-2 * slots // max(1, batch_size))))


def install(spec: ModelSpec, kind: str = "auto", device: str | None = None, worker: str | None = None) -> Runtime:
    """Load the model once for this process (an engine with a loop thread starts it: its step is
    compiled now, not during a run)."""
    global _current
    model, tokenizer = load(spec, device=device)
    engine = make_engine(kind, model, tokenizer, spec, get_settings().batch_size)
    if hasattr(engine, "start"):
        engine.start()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if on_cuda(model) else None
    host = socket.gethostname()
    _current = Runtime(spec, engine, worker or f"{spec.name}@{host}", host, gpu)
    return _current
