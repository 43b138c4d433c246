"""Sending job messages: one message per chunk of up to ``batch_size`` jobs of one model."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from celery import Celery
from kombu.exceptions import ChannelError

from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import leaseholders
from nerfleet.tasks.app import NORMAL_PRIORITY
from nerfleet.tasks.queues import aggregate_queue, generation_queue

RETRY_POLICY = {"max_retries": 30, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 10.0}


def enqueue_jobs(
    app: Celery,
    run_id: str,
    jobs: Iterable[tuple[str, str]],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    priority: int = NORMAL_PRIORITY,
) -> int:
    """``jobs`` is (model name, job hash); messages carry ids only, never texts."""
    by_model: dict[str, list[str]] = defaultdict(list)
    sent = 0
    with app.producer_or_acquire() as producer:

        def flush(model: str) -> None:
            nonlocal sent
            chunk = by_model.pop(model)
            app.send_task(
                "nerfleet.generate",
                args=[run_id, model, chunk],
                queue=generation_queue(model),
                priority=priority,
                producer=producer,
                retry=True,
                retry_policy=RETRY_POLICY,
            )
            sent += len(chunk)
            if progress:
                progress(len(chunk))

        for model, h in jobs:
            by_model[model].append(h)
            if len(by_model[model]) >= batch_size:
                flush(model)
        for model in list(by_model):
            flush(model)
    return sent


def enqueue_aggregation(app: Celery, run_id: str) -> None:
    app.send_task("nerfleet.aggregate", args=[run_id], queue=aggregate_queue(), retry=True, retry_policy=RETRY_POLICY)


def waiting_messages(app: Celery, queue: str) -> int:
    """Messages waiting in a queue (all its priorities); 0 for a queue the broker does not have."""
    with app.connection_for_write() as conn:
        try:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except ChannelError:
            return 0


def consumers(app: Celery, models: Iterable[str], timeout: float = 1.0) -> dict[str, set[str]]:
    """The live workers on each model's queue: those that answer Celery's broadcast within
    ``timeout`` (``inspect().active_queues()``) and those holding a live lease on one of its jobs."""
    models = list(models)
    by_queue: dict[str, set[str]] = defaultdict(set)
    for worker, queues in (app.control.inspect(timeout=timeout).active_queues() or {}).items():
        for q in queues:
            by_queue[q["name"]].add(worker)
    with session_scope() as session:
        busy = leaseholders(session, models)
    return {m: by_queue.get(generation_queue(m), set()) | busy.get(m, set()) for m in models}
