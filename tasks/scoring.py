"""A worker scores the answers it stores in processes of its own, while its GPU generates.

Matching answers against their notes is pure Python: on a 2-core CPU a note takes ~3 ms to prepare
and an answer ~1.6 ms to match (SmolLM2's 1,002 study answers: 2.2 s, ``bench/aggregation.py``).
Done by the aggregation at a run's end it is seconds of wall time after the last answer (a third of
a short run); done in the worker's own process it would take the interpreter's lock from the thread
that feeds the GPU. So each worker keeps a pool of spawned processes (``NERFLEET_SCORING_PROCESSES``):
every stored message's answers are scored there and their counts stored
(:mod:`nerfleet.storage.counts`), and the aggregation first has the pool score whatever is still
missing, in parallel, then reads counts. Without a pool the aggregation computes them itself; the
scores are the same either way (a test checks it).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from sqlmodel import select

from nerfleet.evaluation.scoring import PreparedDoc, Response, prepare
from nerfleet.settings import get_settings
from nerfleet.storage.corpus_store import load_documents
from nerfleet.storage.counts import stored_response_counts
from nerfleet.storage.db import read_scope
from nerfleet.storage.tables import Generation, Job, PromptText

log = logging.getLogger(__name__)

_pool: ProcessPoolExecutor | None = None
_processes = 0
_pending: set[Future] = set()
_lock = threading.Lock()
#: A process's prepared notes, by (database, corpus id, document id): each prepared once per process.
_notes: dict[tuple[str, int, str], PreparedDoc] = {}
_NOTES_KEPT = 4096


def processes_wanted() -> int:
    wanted = get_settings().scoring_processes
    return min(4, max(0, (os.cpu_count() or 1) - 2)) if wanted is None else max(0, wanted)


def start(processes: int | None = None) -> int:
    """Start this process's scoring pool (spawned: the worker holds CUDA and threads, no fork);
    how many processes it has."""
    global _pool, _processes
    n = processes_wanted() if processes is None else processes
    if n and _pool is None:
        _processes = n
        ctx = multiprocessing.get_context("spawn")
        _pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_child_start, initargs=(os.getpid(),))
        warm = [_pool.submit(time.sleep, 0) for _ in range(n)]  # the imports now, not at the first answers
        with _lock:
            _pending.update(warm)
        for future in warm:
            future.add_done_callback(_done)
    return n


def stop() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=False)
        _pool = None


def submit(jobs: Sequence[str]) -> None:
    """Score these stored answers in the pool, in the background (nothing without a pool), split
    over its processes: a run's last message is scored after its last answer, while the
    aggregation waits, so its answers are scored in parallel."""
    if _pool is None or not jobs:
        return
    jobs = list(jobs)
    parts = max(1, min(len(jobs) // 8, _processes))
    try:
        futures = [_pool.submit(score_jobs, jobs[i::parts]) for i in range(parts)]
    except BrokenProcessPool as exc:  # a scoring process died (killed, out of memory)
        _give_up(exc)
        return
    with _lock:
        _pending.update(futures)
    for future in futures:
        future.add_done_callback(_done)


def settle() -> None:
    """Wait for the answers being scored (an aggregation reads their counts next)."""
    with _lock:
        pending = list(_pending)
    wait(pending)


def score_across(jobs: Sequence[str]) -> None:
    """Score these stored answers across the pool in parallel and wait (nothing without a pool):
    an aggregation's missing counts."""
    if _pool is None or not jobs:
        return
    jobs = list(jobs)
    parts = max(1, min(len(jobs) // 16, 4 * _processes))
    try:
        futures = [_pool.submit(score_jobs, jobs[i::parts]) for i in range(parts)]
    except BrokenProcessPool as exc:
        _give_up(exc)
        return
    for f in wait(futures).done:
        if f.exception() is not None:  # the aggregation computes what is still missing
            log.warning("scoring process failed: %s: %s", type(f.exception()).__name__, f.exception())


def _give_up(exc: BaseException) -> None:
    """A broken pool is dropped: the aggregation computes the counts itself from now on."""
    global _pool
    log.warning("scoring processes lost (%s): the aggregation will score the answers", exc)
    _pool = None


def _done(future: Future) -> None:
    with _lock:
        _pending.discard(future)
    if not future.cancelled() and future.exception() is not None:
        log.warning("scoring stored answers failed (the aggregation will): %s", future.exception())


def _child_start(parent: int) -> None:
    """In a scoring process: yield the CPU to the worker's engine loop (the thread that feeds the
    GPU is host-bound for a small model), and leave when the worker is gone (a SIGKILL leaves no
    one to say so)."""
    os.nice(10)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="nerfleet-parent-watch", daemon=True).start()


def score_jobs(jobs: Iterable[str]) -> int:
    """Score these jobs' stored answers and store their counts (those not stored already); how many
    answers there were. Runs in a scoring process (or anywhere: it reads and writes the database only)."""
    with read_scope() as session:
        rows = session.exec(
            select(Job, Generation, PromptText)
            .join(Generation, Generation.job_hash == Job.hash)
            .join(PromptText, PromptText.hash == Job.prompt_hash)
            .where(Job.hash.in_(list(jobs)))
        ).all()
    by_corpus: dict[int, list[Response]] = defaultdict(list)
    formats: dict[str, str] = {}
    for job, gen, prompt in rows:
        by_corpus[job.corpus_id].append(Response(job.doc_id, job.model, job.prompt, gen.output, job=job.hash))
        formats[job.prompt] = prompt.format
    for corpus_id, responses in by_corpus.items():
        stored_response_counts(corpus_id, responses, formats, lambda ids, c=corpus_id: prepared_notes(c, ids))
    return len(rows)


def prepared_notes(corpus_id: int, doc_ids: Iterable[str]) -> dict[str, PreparedDoc]:
    """These notes prepared for scoring, each once in this process's life."""
    wanted, db = set(doc_ids), get_settings().db_url
    new = [d for d in wanted if (db, corpus_id, d) not in _notes]
    if new:
        if len(_notes) + len(new) > _NOTES_KEPT:
            _notes.clear()
        with read_scope() as session:
            for doc in load_documents(session, corpus_id, doc_ids=new):
                _notes[(db, corpus_id, doc.doc_id)] = prepare(doc)
    return {d: _notes[(db, corpus_id, d)] for d in wanted}
