"""Re-enqueues jobs whose lease expired (their worker died) and aggregates finished runs nobody claimed."""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlmodel import select

from nerfleet.settings import get_settings
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import claim_aggregation, expired, requeue_expired, runs_of
from nerfleet.storage.tables import Run
from nerfleet.tasks.app import RETRY_PRIORITY
from nerfleet.tasks.dispatch import enqueue_aggregation, enqueue_jobs

log = logging.getLogger(__name__)


def sweep(app: Celery) -> dict[str, int]:
    s = get_settings()
    requeued: dict[str, list[tuple[str, str]]] = {}
    failed = 0
    with session_scope() as session:
        for job in expired(session):
            outcome = requeue_expired(session, job, s.max_attempts)
            if outcome == "queued":
                run = (runs_of(session, [job.hash]) or ["?"])[0]
                requeued.setdefault(run, []).append((job.model, job.hash))
            elif outcome == "failed":
                failed += 1
    for run_id, jobs in requeued.items():
        # One job per message: if one of them kills its worker every time, the others are not dragged along.
        enqueue_jobs(app, run_id, jobs, 1, priority=RETRY_PRIORITY)
    aggregated = 0
    with session_scope() as session:
        unclaimed = session.exec(select(Run.id).where(Run.aggregation_claimed_at.is_(None))).all()
        claimed = [r for r in unclaimed if claim_aggregation(session, r)]
    for run_id in claimed:
        enqueue_aggregation(app, run_id)
        aggregated += 1
    n = sum(len(v) for v in requeued.values())
    if n or failed or aggregated:
        log.info(
            "sweep: %d jobs re-enqueued, %d failed after max attempts, %d runs sent to aggregation",
            n,
            failed,
            aggregated,
        )
    return {"requeued": n, "failed": failed, "aggregations": aggregated}


def start_sweeper(app: Celery) -> threading.Event:
    """A daemon thread in each worker; several sweepers are safe (every take-back is conditional)."""
    stop = threading.Event()
    interval = get_settings().sweep_interval_s

    def loop() -> None:
        while not stop.wait(interval):
            try:
                sweep(app)
            except Exception as exc:
                log.warning("sweep failed: %s", exc)

    threading.Thread(target=loop, name="nerfleet-sweeper", daemon=True).start()
    return stop
