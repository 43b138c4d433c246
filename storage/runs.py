"""Read side of runs: status counts, stored scores, exports."""

from __future__ import annotations

import json
from collections.abc import Iterator

from sqlalchemy import func
from sqlmodel import Session, select

from nerfleet.settings import get_settings
from nerfleet.storage.jobs import run_counts
from nerfleet.storage.metrics import rows_to_scores
from nerfleet.storage.tables import Generation, Job, Metric, Run, RunJob

STATES = ("queued", "running", "done", "failed")


def get_run(session: Session, run_id: str | None) -> Run:
    stmt = select(Run).order_by(Run.created_at.desc())
    if run_id:
        stmt = select(Run).where((Run.id == run_id) | (Run.name == run_id)).order_by(Run.created_at.desc())
    run = session.exec(stmt).first()
    if run is None:
        raise LookupError(f"no run {run_id!r}" if run_id else "no run in the database")
    return run


def run_status(session: Session, run: Run) -> dict:
    cells: dict[str, dict[str, dict[str, int]]] = {}
    totals = dict.fromkeys(STATES, 0)
    for model, prompt, state, n in run_counts(session, run.id):
        cells.setdefault(model, {}).setdefault(prompt, dict.fromkeys(STATES, 0))[state] = n
        totals[state] += n
    attempts = session.exec(
        select(func.count(), func.coalesce(func.max(Job.attempts), 0))
        .select_from(RunJob)
        .join(Job, Job.hash == RunJob.job_hash)
        .where(RunJob.run_id == run.id, Job.attempts > 1)
    ).one()
    return {
        "run": run.id,
        "name": run.name,
        "total": run.total,
        **totals,
        # the one retry budget: a job is tried at most NERFLEET_MAX_ATTEMPTS times
        "retried": attempts[0],
        "most_attempts": attempts[1],
        "max_attempts": get_settings().max_attempts,
        "aggregated": run.aggregated_at is not None,
        "aggregation_count": run.aggregation_count,
        "aggregation_error": run.aggregation_error if run.aggregated_at is None else None,
        "cells": cells,
    }


def run_scores(session: Session, run: Run) -> dict:
    scores = rows_to_scores(session.exec(select(Metric).where(Metric.run_id == run.id)))
    failed: dict = {}
    stmt = (
        select(Job.model, Job.prompt, Job.doc_id)
        .join(RunJob, RunJob.job_hash == Job.hash)
        .where(RunJob.run_id == run.id, Job.state == "failed")
    )
    for model, prompt, doc_id in session.exec(stmt):
        failed.setdefault(model, {}).setdefault(prompt, []).append(doc_id)
    scores["failed"] = failed
    return scores


def export_lines(session: Session, run: Run) -> Iterator[str]:
    """The run's outputs in the ``nerfleet score`` JSONL format."""
    stmt = (
        select(Job, Generation)
        .join(RunJob, RunJob.job_hash == Job.hash)
        .join(Generation, Generation.job_hash == Job.hash, isouter=True)
        .where(RunJob.run_id == run.id)
        .order_by(Job.model, Job.prompt, Job.doc_id)
    )
    for job, gen in session.exec(stmt):
        if job.state not in ("done", "failed"):
            continue
        yield json.dumps(
            {
                "doc_id": job.doc_id,
                "model": job.model,
                "prompt": job.prompt,
                "output": gen.output if gen else None,
                "error": job.error if gen is None else None,
                "prompt_tokens": gen.prompt_tokens if gen else None,
                "output_tokens": gen.output_tokens if gen else None,
            }
        )
