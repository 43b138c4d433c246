"""The producer: a run is a batch of (model, prompt, document) jobs; the same command resumes it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, update
from sqlmodel import select

from nerfleet.evaluation.prompts import Prompt, load_prompt
from nerfleet.settings import get_settings
from nerfleet.storage.corpus_store import get_corpus, load_documents
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import claim_aggregation, insert_ignore, job_hash
from nerfleet.storage.tables import Document, Job, PromptText, Run, RunJob, utcnow
from nerfleet.tasks.app import make_app
from nerfleet.tasks.broker import redacted
from nerfleet.tasks.dispatch import enqueue_aggregation, enqueue_jobs
from nerfleet.workers.models import ModelSpec, resolve

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    run_id: str
    total: int
    already_done: int
    enqueued: int
    aggregation_enqueued: bool
    models: tuple[str, ...] = ()  # the models' names, as their queues know them


def plan_id(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def create_run(
    models: Sequence[str],
    prompts: Sequence[str],
    split: str = "test",
    limit: int | None = None,
    max_new_tokens: int | None = None,
    name: str | None = None,
    corpus: str | None = None,
    retry_failed: bool = False,
    progress: Callable[[int], None] | None = None,
    app=None,
    budgets: Mapping[str, int] | None = None,
) -> RunPlan:
    """Write the run and its jobs, then enqueue every job that has no result yet. ``budgets``
    gives documents a ``max_new_tokens`` of their own (every prompt's job for that document): a
    workload whose answers are known to differ in length, e.g. a previous run's answer lengths."""
    app = app or make_app()  # from the settings in force now (a producer only sends by task name)
    s = get_settings()
    if not models:
        raise ValueError("no --model given")
    if not prompts:
        raise ValueError("no --prompt given")
    specs: list[ModelSpec] = [resolve(m) for m in models]
    loaded: list[Prompt] = [load_prompt(p) for p in prompts]
    if len({p.name for p in loaded}) != len(loaded):
        raise ValueError("two prompts share a name in one run; give custom prompts distinct names")
    params = {"max_new_tokens": max_new_tokens or s.max_new_tokens, "do_sample": False}
    _check_broker(app)
    with session_scope() as session:
        c = get_corpus(session, corpus)
        docs = load_documents(session, c.id, split)
        unknown = sorted(set(budgets or ()) - {d.doc_id for d in docs})
        if unknown:
            raise ValueError(f"budgets: {len(unknown)} document id(s) not in split {split!r}, first {unknown[0]!r}")
        if limit is not None:
            docs = docs[:limit]
        if not docs:
            raise ValueError(f"corpus {c.name} v{c.version} has no documents in split {split!r}")
        budgets = {d.doc_id: budgets[d.doc_id] for d in docs if d.doc_id in budgets} if budgets else {}
        spec = {
            "corpus": c.id,
            "models": [m.as_dict() | {"fingerprint": m.fingerprint()} for m in specs],
            "prompts": [p.hash for p in loaded],
            "split": split,
            "documents": [d.doc_id for d in docs],
            "params": params,
        }
        if budgets:  # a run of other budgets is another run
            spec["budgets"] = budgets
        run_id = name if name and session.get(Run, name) else plan_id(spec)
        run = session.get(Run, run_id)
        if run is None:
            run = Run(id=run_id, name=name or run_id, corpus_id=c.id, spec_json=json.dumps(spec))
            session.add(run)
        insert_ignore(
            session,
            PromptText,
            [
                {"hash": p.hash, "name": p.name, "format": p.format, "template": p.template, "guided": p.guided}
                for p in loaded
            ],
        )

        def job_rows():
            for m in specs:
                fp = m.fingerprint()
                for p in loaded:
                    for d in docs:
                        own = {**params, "max_new_tokens": budgets[d.doc_id]} if d.doc_id in budgets else params
                        yield {
                            "hash": job_hash(fp, m.chat, p.hash, d.text, own),
                            "model": m.name,
                            "prompt": p.name,
                            "prompt_hash": p.hash,
                            "corpus_id": c.id,
                            "doc_id": d.doc_id,
                            "params_json": json.dumps(own),
                            "state": "queued",
                            "attempts": 0,
                            "updated_at": utcnow(),
                        }

        # Written chunk by chunk: a grid of a million jobs never sits in memory at once.
        total = 0
        for chunk in _chunks(job_rows(), s.enqueue_chunk):
            insert_ignore(session, Job, chunk)
            insert_ignore(session, RunJob, [{"run_id": run_id, "job_hash": r["hash"]} for r in chunk])
            total += len(chunk)
        run.total = total
        if retry_failed:
            session.exec(
                update(Job)
                .where(Job.hash.in_(select(RunJob.job_hash).where(RunJob.run_id == run_id)), Job.state == "failed")
                .values(state="queued", attempts=0, error=None)
            )
            run.aggregation_claimed_at = None
            run.aggregated_at = None
        session.add(run)
    # Enqueue what has no result, chunk by chunk so a huge grid never sits in memory twice.
    enqueued = done = 0
    with session_scope() as session:
        now = utcnow()
        stmt = (
            select(Job.model, Job.hash, Job.state, Job.lease_until)
            .join(RunJob, RunJob.job_hash == Job.hash)
            .join(Document, and_(Document.corpus_id == Job.corpus_id, Document.doc_id == Job.doc_id))
            .where(RunJob.run_id == run_id)
            # Documents of similar length share a message, hence a batch: little padding.
            .order_by(Job.model, Job.prompt, func.length(Document.text), Job.doc_id)
        )
        todo = []
        for model, h, state, lease in session.exec(stmt.execution_options(yield_per=s.enqueue_chunk)):
            if state in ("done", "failed"):
                done += 1
            elif state == "queued" or lease is None or lease < now:
                todo.append((model, h))  # two short strings per job
    for chunk in _chunks(iter(todo), s.enqueue_chunk):
        enqueued += enqueue_jobs(app, run_id, chunk, s.batch_size, progress)
    with session_scope() as session:
        agg = claim_aggregation(session, run_id)
    if agg:
        enqueue_aggregation(app, run_id)
    elif enqueued:  # while the workers generate: the calibration rows their aggregation will read
        # deferred: the scoring stack (seqeval, scikit-learn: 0.8 s), needed only once the jobs are sent
        from nerfleet.evaluation.scoring import prepare
        from nerfleet.storage.counts import stored_calibration

        notes = {d.doc_id: d for d in docs}
        try:
            stored_calibration(c.id, notes, {p.format for p in loaded}, lambda ids: {i: prepare(notes[i]) for i in ids})
        except Exception as exc:  # noqa: BLE001 - the aggregation computes what is missing
            log.warning("calibration rows not stored now (the aggregation will compute them): %s", exc)
    return RunPlan(run_id, total, done, enqueued, agg, tuple(m.name for m in specs))


def _check_broker(app) -> None:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3, interval_start=0.2, interval_step=0.5, timeout=5)
    except Exception as exc:
        raise ConnectionError(f"broker {redacted(app.conf.broker_url)} unreachable: {exc}") from None


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
