"""The generation task: claim a chunk of jobs, generate them as one batch, store, maybe aggregate."""

from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError
from sqlmodel import select

from nerfleet.settings import get_settings
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import claim, claim_aggregation, finish, release, runs_of
from nerfleet.storage.tables import Document, PromptText
from nerfleet.tasks import scoring
from nerfleet.tasks.app import RETRY_PRIORITY, app
from nerfleet.tasks.dispatch import enqueue_aggregation, enqueue_jobs
from nerfleet.tasks.leases import lease_keeper
from nerfleet.tasks.queues import generation_queue
from nerfleet.workers import runtime
from nerfleet.workers.engine import GenerationRequest

log = logging.getLogger(__name__)


@app.task(
    name="nerfleet.generate",
    bind=True,
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=20,  # transient database errors only; engine errors count in the job's attempts
)
def generate(self, run_id: str, model: str, jobs: list[str]) -> dict:
    """Arguments are ids only (run, model, job hashes): Flower shows them, messages stay small."""
    s = get_settings()
    rt = runtime.current()
    if model != rt.spec.name:
        # A message on the wrong queue (queue names of two models that collide, a hand-sent
        # message): its jobs go to their own model's queue, untouched here.
        log.error(
            "message for model %s reached a worker holding %s: sent to %s", model, rt.spec.name, generation_queue(model)
        )
        if generation_queue(model) != generation_queue(rt.spec.name):
            enqueue_jobs(app, run_id, [(model, h) for h in jobs], len(jobs))
        return {"claimed": 0, "forwarded": len(jobs)}
    with session_scope() as session:
        claimed, failed_now = claim(session, jobs, model, rt.worker, s.lease_s, s.max_attempts)
        requests = requests_for(session, claimed)
    hashes = [c.hash for c in claimed]
    if hashes:
        log.info("run %s: generating %d jobs of %s", run_id, len(hashes), model)
        with lease_keeper(hashes, rt.worker):
            try:
                results = rt.engine.generate(requests)
            except Exception as exc:
                # One retry budget: the database's attempts. The jobs go back to the queue (or fail
                # once their attempts are spent), each in a message of its own, so a job that
                # breaks the engine every time does not drag the others along.
                with session_scope() as session:
                    failed_now += release(session, hashes, f"{type(exc).__name__}: {exc}", s.max_attempts)
                gave_up = set(failed_now)
                again = [h for h in hashes if h not in gave_up]
                log.warning(
                    "run %s: generation failed (%s: %s); %d jobs sent again, %d failed after %d attempts",
                    run_id, type(exc).__name__, str(exc)[:200], len(again), len(failed_now), s.max_attempts,
                )  # fmt: skip
                enqueue_jobs(app, run_id, [(model, h) for h in again], 1, priority=RETRY_PRIORITY)
                _after(finished=failed_now)
                return {"claimed": len(hashes), "failed": len(failed_now), "sent_again": len(again)}
        rows = [
            {
                "job_hash": r.key,
                "output": r.output,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "truncated": r.truncated,
                "latency_s": r.latency_s,
                "engine": rt.engine.name,
                "host": rt.host,
                "gpu": rt.gpu,
            }
            for r in results
        ]
        with session_scope() as session:
            finish(session, rows)
        scoring.submit(hashes)  # their counts, in the worker's scoring processes, while it generates
    _after(finished=hashes + failed_now)
    return {"claimed": len(hashes), "failed": len(failed_now)}


def requests_for(session, jobs) -> list[GenerationRequest]:
    """The engine's requests for these jobs, in their order: two queries for the whole batch (its
    documents and its prompt templates). The fleet benchmark builds the engine-alone run with it."""
    docs = {
        (d.corpus_id, d.doc_id): d.text
        for d in session.exec(
            select(Document).where(
                Document.corpus_id.in_({c.corpus_id for c in jobs}),
                Document.doc_id.in_({c.doc_id for c in jobs}),
            )
        )
    }
    prompts = {c.prompt_hash for c in jobs}
    texts = {p.hash: p for p in session.exec(select(PromptText).where(PromptText.hash.in_(prompts)))}
    return [
        GenerationRequest(
            c.hash,
            texts[c.prompt_hash].template,
            docs[(c.corpus_id, c.doc_id)],
            int(c.params["max_new_tokens"]),
            guide=texts[c.prompt_hash].format if texts[c.prompt_hash].guided else None,
        )
        for c in jobs
    ]


def _after(finished: list[str]) -> None:
    """The worker that finishes a run's last job claims its aggregation (exactly one wins)."""
    if not finished:
        return
    with session_scope() as session:
        claimed = [r for r in runs_of(session, finished) if claim_aggregation(session, r)]
    for run_id in claimed:
        enqueue_aggregation(app, run_id)
