"""Job life cycle in the database, which is the truth: delivery is at least once, effects exactly once.

States: queued → running (leased to one worker) → done | failed. A lease that is
not renewed expires and the sweeper hands the job out again; attempts are counted
so a job that kills its worker every time ends as failed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import String, and_, cast, func, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, select

from nerfleet.storage.tables import Generation, Job, Run, RunJob, utcnow

FINAL = ("done", "failed")

#: The error of a job failed for its attempts: SQL, so that one statement writes each row's count.
_gave_up = "gave up after " + cast(Job.attempts, String) + " attempts (worker lost or crashed)"


def job_hash(model_fingerprint: str, chat: bool | None, prompt_hash: str, text: str, params: dict[str, Any]) -> str:
    payload = json.dumps(
        {
            "model": model_fingerprint,
            "chat": chat,
            "prompt": prompt_hash,
            "document": hashlib.sha256(text.encode()).hexdigest(),
            "params": params,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def insert_ignore(session: Session, table: type[SQLModel], rows: Sequence[dict]) -> int:
    """INSERT … ON CONFLICT DO NOTHING, on SQLite and PostgreSQL."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    pk = list(table.__table__.primary_key.columns)[0]
    stmt = insert(table.__table__).values(list(rows)).on_conflict_do_nothing().returning(pk)
    return len(session.exec(stmt).all())  # type: ignore[call-overload]


@dataclass(frozen=True)
class Claimed:
    hash: str
    prompt_hash: str
    corpus_id: int
    doc_id: str
    params: dict


def claim(
    session: Session, hashes: Iterable[str], model: str, worker: str, lease_s: int, max_attempts: int
) -> tuple[list[Claimed], list[str]]:
    """Lease the jobs that are free (queued, or running with an expired lease).

    Returns (claimed, failed_now): jobs past ``max_attempts`` are failed instead.
    Each UPDATE is conditional, so two workers never both claim one job.
    """
    now = utcnow()
    free = or_(Job.state == "queued", and_(Job.state == "running", Job.lease_until < now))
    mine = and_(Job.hash.in_(list(hashes)), Job.model == model, free)
    # Two statements for the whole batch; each row's update is conditional, so a job another
    # worker holds (or has finished) is left alone.
    failed = session.exec(
        update(Job)
        .where(mine, Job.attempts >= max_attempts)
        .values(state="failed", error=_gave_up, updated_at=now)
        .returning(Job.hash)
    ).all()
    rows = session.exec(
        update(Job)
        .where(mine, Job.attempts < max_attempts)
        .values(
            state="running",
            attempts=Job.attempts + 1,
            lease_until=now + timedelta(seconds=lease_s),
            worker=worker,
            updated_at=now,
        )
        .returning(Job.hash, Job.prompt_hash, Job.corpus_id, Job.doc_id, Job.params_json)
    ).all()
    order = {h: i for i, h in enumerate(hashes)}
    claimed = sorted(
        (Claimed(h, p, c, d, json.loads(params)) for h, p, c, d, params in rows), key=lambda j: order[j.hash]
    )
    return claimed, sorted((row[0] for row in failed), key=order.__getitem__)


def renew(session: Session, hashes: Sequence[str], worker: str, lease_s: int) -> int:
    res = session.exec(
        update(Job)
        .where(Job.hash.in_(hashes), Job.state == "running", Job.worker == worker)
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )
    return res.rowcount or 0


def finish(session: Session, generations: Sequence[dict]) -> None:
    """Store outputs (a second write of one job changes nothing) and mark the jobs done."""
    insert_ignore(session, Generation, generations)
    hashes = [g["job_hash"] for g in generations]
    session.exec(
        update(Job).where(Job.hash.in_(hashes)).values(state="done", lease_until=None, error=None, updated_at=utcnow())
    )


def release(session: Session, hashes: Sequence[str], error: str, max_attempts: int) -> list[str]:
    """After an error: back to the queue, or failed once attempts are used up. Returns the failed."""
    failed = []
    for h in hashes:
        job = session.get(Job, h)
        if job is None or job.state != "running":
            continue
        final = job.attempts >= max_attempts
        job.state = "failed" if final else "queued"
        job.error = error[:2000]
        job.lease_until = None
        job.updated_at = utcnow()
        session.add(job)
        if final:
            failed.append(h)
    return failed


def run_of_each(session: Session, hashes: Sequence[str]) -> dict[str, str]:
    """A run holding each job (one query for them all; a job in several runs gets one of them)."""
    rows = session.exec(select(RunJob.job_hash, RunJob.run_id).where(RunJob.job_hash.in_(list(hashes))))
    return dict(rows.all())


def runs_of(session: Session, hashes: Sequence[str]) -> list[str]:
    return list(session.exec(select(RunJob.run_id).where(RunJob.job_hash.in_(hashes)).distinct()))


def open_jobs(session: Session, run_id: str) -> int:
    stmt = (
        select(func.count())
        .select_from(RunJob)
        .join(Job, Job.hash == RunJob.job_hash)
        .where(RunJob.run_id == run_id, Job.state.not_in(FINAL))
    )
    return session.exec(stmt).one()


def claim_aggregation(session: Session, run_id: str) -> bool:
    """True for exactly one caller once every job of the run is final."""
    if open_jobs(session, run_id):
        return False
    res = session.exec(
        update(Run)
        .where(Run.id == run_id, Run.aggregation_claimed_at.is_(None))
        .values(aggregation_claimed_at=utcnow())
    )
    return bool(res.rowcount)


def reclaim_stale_aggregations(session: Session, older_than_s: float) -> list[str]:
    """Runs whose aggregation was claimed over ``older_than_s`` ago and never stored, claimed again
    (now): each is returned to exactly one caller per bound."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stale = session.exec(select(Run.id).where(Run.aggregated_at.is_(None), Run.aggregation_claimed_at < cutoff)).all()
    won = []
    for run_id in stale:
        res = session.exec(
            update(Run)
            .where(Run.id == run_id, Run.aggregated_at.is_(None), Run.aggregation_claimed_at < cutoff)
            .values(aggregation_claimed_at=utcnow())
        )
        if res.rowcount:
            won.append(run_id)
    return won


def stale_queued(session: Session, older_than_s: float, limit: int = 10_000) -> list[Job]:
    """Queued jobs not enqueued (or re-sent) for ``older_than_s``: their message may be lost."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stmt = select(Job).where(Job.state == "queued", Job.updated_at < cutoff).limit(limit)
    return list(session.exec(stmt))


def mark_resent(session: Session, hashes: Sequence[str]) -> int:
    """Stamp re-sent queued jobs, so each is re-sent once per staleness bound, not at every sweep."""
    res = session.exec(update(Job).where(Job.hash.in_(list(hashes)), Job.state == "queued").values(updated_at=utcnow()))
    return res.rowcount or 0


def expired(session: Session, limit: int = 10_000) -> list[Job]:
    stmt = select(Job).where(Job.state == "running", Job.lease_until < utcnow()).limit(limit)
    return list(session.exec(stmt))


def requeue_expired(session: Session, job: Job, max_attempts: int) -> str | None:
    """Conditionally take back an expired lease: 'queued', 'failed', or None if someone else did."""
    now = utcnow()
    final = job.attempts >= max_attempts
    values: dict[str, Any] = {"state": "failed" if final else "queued", "lease_until": None, "updated_at": now}
    if final:
        values["error"] = f"gave up after {job.attempts} attempts (lease expired: worker lost)"
    res = session.exec(
        update(Job).where(Job.hash == job.hash, Job.state == "running", Job.lease_until < now).values(**values)
    )
    return values["state"] if res.rowcount else None


def run_counts(session: Session, run_id: str) -> list[tuple[str, str, str, int]]:
    """(model, prompt, state, count) rows for one run."""
    stmt = (
        select(Job.model, Job.prompt, Job.state, func.count())
        .join(RunJob, RunJob.job_hash == Job.hash)
        .where(RunJob.run_id == run_id)
        .group_by(Job.model, Job.prompt, Job.state)
    )
    return [tuple(r) for r in session.exec(stmt)]


def leaseholders(session: Session, models: Sequence[str]) -> dict[str, set[str]]:
    """Workers that hold a live lease on a running job, by model: alive and on its queue, even when
    too busy to answer a broadcast (a solo pool answers only between tasks)."""
    rows = session.exec(
        select(Job.model, Job.worker)
        .where(Job.model.in_(list(models)), Job.state == "running", Job.lease_until > utcnow())
        .distinct()
    )
    found: dict[str, set[str]] = {}
    for model, worker in rows:
        if worker:
            found.setdefault(model, set()).add(worker)
    return found
