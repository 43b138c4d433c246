"""The one model a worker process holds, loaded once at start, and its lease keeper."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from nerfleet.settings import get_settings
from nerfleet.workers.engine import BatchedEngine, CompiledEngine, Engine, SimpleEngine, on_cuda
from nerfleet.workers.models import ModelSpec, load

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


def make_engine(kind: str, model, tokenizer, spec: ModelSpec, batch_size: int) -> Engine:
    """'simple', 'batched', or 'module:Class' (a class taking the same arguments as BatchedEngine)."""
    if kind == "simple":
        return SimpleEngine(model, tokenizer, chat=spec.chat)
    if kind == "batched":
        return BatchedEngine(model, tokenizer, chat=spec.chat, batch_size=batch_size)
    if kind == "compiled":
        return CompiledEngine(model, tokenizer, chat=spec.chat, batch_size=batch_size)
    if ":" in kind:
        module, _, attr = kind.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(model, tokenizer, chat=spec.chat, batch_size=batch_size)
    raise ValueError(f"unknown engine {kind!r}: use simple, batched, compiled or module:Class")


def install(
    spec: ModelSpec, engine_kind: str = "batched", device: str | None = None, worker: str | None = None
) -> Runtime:
    """Load the model once for this process."""
    global _current
    model, tokenizer = load(spec, device=device)
    engine = make_engine(engine_kind, model, tokenizer, spec, get_settings().batch_size)
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if on_cuda(model) else None
    host = socket.gethostname()
    _current = Runtime(spec, engine, worker or f"{spec.name}@{host}", host, gpu)
    return _current


@contextmanager
def lease_keeper(hashes: Sequence[str], worker: str) -> Iterator[None]:
    """Renew the leases of the jobs in hand while they run (a heartbeat in the database)."""
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.jobs import renew

    s = get_settings()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(s.heartbeat_s):
            try:
                with session_scope() as session:
                    renew(session, hashes, worker, s.lease_s)
            except Exception as exc:  # a missed beat is retried at the next one
                log.warning("lease renewal failed: %s", exc)

    thread = threading.Thread(target=beat, name="nerfleet-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
