"""The database is the truth of what is owed; the sweeper makes the broker agree with it.

It re-enqueues jobs whose lease expired (their worker died), re-sends queued jobs whose message
was lost (a Redis restarted without its append-only file, flushed, or evicting: queued for longer
than ``NERFLEET_ORPHAN_S`` while their model's queue holds no message), aggregates finished
runs nobody claimed, and sends again an aggregation claimed over ``NERFLEET_AGGREGATION_LEASE_S``
ago that never stored its metrics (its message lost, its worker killed). Every re-send is
harmless if the original message still lives: claiming is conditional in the database, so a job
runs and is stored once, and only one aggregation stores a run's metrics.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from sqlmodel import select

from nerfleet.settings import get_settings
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import (
    claim_aggregation,
    expired,
    mark_resent,
    reclaim_stale_aggregations,
    requeue_expired,
    run_of_each,
    stale_queued,
)
from nerfleet.storage.tables import Job, Run
from nerfleet.tasks.app import RETRY_PRIORITY
from nerfleet.tasks.dispatch import enqueue_aggregation, enqueue_jobs, waiting_messages
from nerfleet.tasks.queues import generation_queue

log = logging.getLogger(__name__)


def sweep(app: Celery) -> dict[str, int]:
    s = get_settings()
    requeued: dict[str, list[tuple[str, str]]] = {}
    failed = 0
    with session_scope() as session:
        jobs = expired(session)
        runs = run_of_each(session, [j.hash for j in jobs])
        for job in jobs:
            outcome = requeue_expired(session, job, s.max_attempts)
            if outcome == "queued":
                requeued.setdefault(runs.get(job.hash, "?"), []).append((job.model, job.hash))
            elif outcome == "failed":
                failed += 1
    for run_id, jobs in requeued.items():
        # One job per message: if one of them kills its worker every time, the others are not dragged along.
        enqueue_jobs(app, run_id, jobs, 1, priority=RETRY_PRIORITY)
    resent = resend_orphans(app, s.orphan_s)
    aggregated = 0
    with session_scope() as session:
        unclaimed = session.exec(select(Run.id).where(Run.aggregation_claimed_at.is_(None))).all()
        claimed = [r for r in unclaimed if claim_aggregation(session, r)]
        claimed += reclaim_stale_aggregations(session, s.aggregation_lease_s)
    for run_id in claimed:
        enqueue_aggregation(app, run_id)
        aggregated += 1
    n = sum(len(v) for v in requeued.values())
    if n or failed or aggregated or resent:
        log.info(
            "sweep: %d jobs re-enqueued, %d whose message was lost re-sent, %d failed after max attempts, "
            "%d runs sent to aggregation",
            n,
            resent,
            failed,
            aggregated,
        )
    return {"requeued": n, "resent": resent, "failed": failed, "aggregations": aggregated}


def resend_orphans(app: Celery, older_than_s: float) -> int:
    """Queued jobs older than the bound whose model's queue is empty: their message is gone (or
    about to be taken, which a re-send does not harm). Re-sent at the front, stamped, so each is
    re-sent once per bound."""
    with session_scope() as session:
        stale = stale_queued(session, older_than_s)
    by_model: dict[str, list[Job]] = {}
    for job in stale:
        by_model.setdefault(job.model, []).append(job)
    sent = 0
    for model, jobs in by_model.items():
        if waiting_messages(app, generation_queue(model)):
            continue  # a backlog, not a loss: its messages are still there
        with session_scope() as session:
            hashes = [j.hash for j in jobs]
            runs = run_of_each(session, hashes)
            mark_resent(session, hashes)
        by_run: dict[str, list[tuple[str, str]]] = {}
        for h in hashes:
            by_run.setdefault(runs.get(h, "?"), []).append((model, h))
        for run_id, pairs in by_run.items():
            sent += enqueue_jobs(app, run_id, pairs, get_settings().batch_size, priority=RETRY_PRIORITY)
    return sent


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
