"""The aggregation task: both strategies and the parse ratio for one run, stored once."""

from __future__ import annotations

import logging
import time

from sqlalchemy import update
from sqlmodel import select

from nerfleet.evaluation.grid import Scores, score_grid
from nerfleet.evaluation.scoring import Response
from nerfleet.storage.counts import stored_calibration, stored_response_counts
from nerfleet.storage.db import read_scope, session_scope
from nerfleet.storage.metrics import replace_metrics, scores_to_rows
from nerfleet.storage.tables import Generation, Job, PromptText, Run, RunJob, utcnow
from nerfleet.tasks import scoring
from nerfleet.tasks.app import app

log = logging.getLogger(__name__)


def collect_responses(session, run_id: str) -> tuple[list[Response], dict[str, str]]:
    """The run's responses (failed jobs with ``output=None``) and each prompt's format."""
    rows = session.exec(
        select(Job, Generation)
        .join(RunJob, RunJob.job_hash == Job.hash)
        .join(Generation, Generation.job_hash == Job.hash, isouter=True)
        .where(RunJob.run_id == run_id)
    ).all()
    responses = [
        Response(job.doc_id, job.model, job.prompt, gen.output if gen is not None else None, job.error, job.hash)
        for job, gen in rows
        if job.state in ("done", "failed")
    ]
    hashes = {job.prompt_hash for job, _ in rows}
    formats = {p.name: p.format for p in session.exec(select(PromptText).where(PromptText.hash.in_(hashes)))}
    return responses, formats


def score_run(run_id: str, errors: bool = False) -> Scores:
    """Score a run's stored responses now (with the per-document counts that comparisons need).

    Counts come from storage: the calibration rows the producer stored, the answers the workers'
    scoring processes stored (what they have not yet is scored across them first); only what is
    still missing is computed here, and only its notes prepared. ``errors``: every note prepared,
    for the error export."""
    with read_scope() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"no run {run_id!r}")
        responses, formats = collect_responses(session, run_id)
    # outside any transaction: on SQLite it holds the write lock that the workers' claims need
    start = time.perf_counter()
    scoring.settle()
    settled = time.perf_counter()

    def prepare(ids: set[str]) -> dict:
        return scoring.prepared_notes(run.corpus_id, ids)

    counted = stored_response_counts(run.corpus_id, responses, formats, prepare, elsewhere=scoring.score_across)
    doc_ids = sorted({r.doc_id for r in responses})
    known = stored_calibration(run.corpus_id, doc_ids, set(formats.values()), prepare)
    docs = prepare(set(doc_ids)) if errors else {}
    log.info(
        "run %s: waited %.2f s for the scoring processes, then %.2f s for the counts they had not stored",
        run_id, settled - start, time.perf_counter() - settled,
    )  # fmt: skip
    return score_grid(responses, docs, formats, known=known, counted=counted)


def aggregate_run(run_id: str, force: bool = False) -> dict | None:
    """Score the run and store its metrics in one transaction.

    Without ``force`` it runs once per run: a redelivered aggregation message
    finds ``aggregated_at`` set and changes nothing (returns None).
    """
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise LookupError(f"no run {run_id!r}")
        if run.aggregated_at is not None and not force:
            return None
    start = time.perf_counter()
    scores = score_run(run_id).to_json()
    with session_scope() as session:
        cond = [Run.id == run_id] + ([] if force else [Run.aggregated_at.is_(None)])
        res = session.exec(
            update(Run)
            .where(*cond)
            .values(aggregated_at=utcnow(), aggregation_count=Run.aggregation_count + 1, aggregation_error=None)
        )
        if not res.rowcount:
            return None
        replace_metrics(session, run_id, scores_to_rows(run_id, scores))
    log.info("run %s aggregated: %d documents in %.2f s", run_id, scores["documents"], time.perf_counter() - start)
    return scores


@app.task(
    name="nerfleet.aggregate",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=2,
    retry_backoff_max=120,
    max_retries=10,
)
def aggregate(run_id: str) -> None:
    """A failure is stored with the run (``status`` shows it) and retried with backoff; the run's
    jobs and generations stay as they are, so a retry (or ``nerfleet aggregate RUN`` once the cause
    is fixed) can succeed."""
    try:
        aggregate_run(run_id)
    except Exception as exc:
        with session_scope() as session:
            session.exec(
                update(Run).where(Run.id == run_id).values(aggregation_error=f"{type(exc).__name__}: {exc}"[:2000])
            )
        log.warning("run %s: aggregation failed (%s: %s); retried", run_id, type(exc).__name__, exc)
        raise
