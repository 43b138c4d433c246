"""Scored answers' counts stored once: the calibration rows of a corpus and each answer of a run.

Matching an answer against its note is most of an aggregation's work, yet its counts depend only on
the note, the answer, its format and the matching parameters. So they are stored (table
``ScoredCount``, JSON) and read back:

- the echo and oracle rows of each note, filled by the producer right after it enqueues a run (its
  GPU work hides the cost): a harness (``bench/aggregation.py``, SmolLM2's 1,002 answers on 334
  notes) scored 2.06 s with them computed, 0.60 s with them read back;
- each answer of a run, scored by the worker's scoring processes as the answer is stored
  (:mod:`nerfleet.tasks.scoring`), so that the aggregation at a run's end reads counts instead of
  preparing notes and matching answers.

Whatever is missing is computed where it is asked for, so nothing depends on who stored what. No
transaction is held while counts are computed: on SQLite every transaction takes the write lock,
and the workers' claims would wait on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from sqlmodel import select

from nerfleet.evaluation.calibration import CALIBRATION_MODELS
from nerfleet.evaluation.grid import calibration_counts
from nerfleet.evaluation.matching import MatchParams
from nerfleet.evaluation.scoring import Counted, Known, PreparedDoc, Response, ResponseCounts, count_response
from nerfleet.storage.db import read_scope, session_scope
from nerfleet.storage.jobs import insert_ignore
from nerfleet.storage.tables import ScoredCount

#: Prepares the notes of these document ids (called only for what has to be computed).
Prepare = Callable[[set[str]], Mapping[str, PreparedDoc]]

K = TypeVar("K")

#: Part of every key: counts of another layout are never read back as these.
LAYOUT = 2


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([LAYOUT, *parts], sort_keys=True).encode()).hexdigest()


def calibration_key(corpus_id: int, doc_id: str, model: str, fmt: str, match: dict) -> str:
    return _key(corpus_id, doc_id, model, fmt, match)


def response_key(corpus_id: int, job: str, fmt: str, match: dict) -> str:
    """A run's answer: its job's hash names the model, prompt, note text and generation; the
    corpus names the gold it is scored against."""
    return _key(corpus_id, "job", job, fmt, match)


def read_counts(keys: Iterable[str]) -> dict[str, ResponseCounts]:
    keys, found = list(keys), {}
    with read_scope() as session:
        for i in range(0, len(keys), 500):  # bounded IN lists
            for row in session.exec(select(ScoredCount).where(ScoredCount.key.in_(keys[i : i + 500]))):
                found[row.key] = ResponseCounts.from_json(json.loads(row.counts_json))
    return found


def store_counts(corpus_id: int, counts: Mapping[str, ResponseCounts]) -> None:
    rows = [{"key": k, "corpus_id": corpus_id, "counts_json": json.dumps(c.to_json())} for k, c in counts.items()]
    with session_scope() as session:
        for i in range(0, len(rows), 500):
            insert_ignore(session, ScoredCount, rows[i : i + 500])


def _read_or_count(
    corpus_id: int,
    wanted: Mapping[str, K],
    count: Callable[[Mapping[str, K]], Mapping[str, ResponseCounts]],
    elsewhere: Callable[[list[K]], None] | None = None,
) -> dict[str, ResponseCounts]:
    """The counts of ``wanted`` (key → what it counts): read where stored; the missing first given
    to ``elsewhere`` to store, then read again; what is still missing counted here and stored."""
    found = read_counts(wanted)
    missing = {k: w for k, w in wanted.items() if k not in found}
    if missing and elsewhere is not None:
        elsewhere(list(missing.values()))
        found.update(read_counts(missing))
        missing = {k: w for k, w in missing.items() if k not in found}
    if missing:
        computed = {k: c for k, c in count(missing).items() if k in missing}
        store_counts(corpus_id, computed)
        found.update(computed)
    return found


def stored_calibration(
    corpus_id: int, doc_ids: Iterable[str], fmts: Iterable[str], prepare: Prepare, params: MatchParams = MatchParams()
) -> Known:
    """The calibration counts of these documents in these formats, each computed (and stored) only
    if no earlier run or producer stored it."""
    match = params.as_dict()
    wanted = {
        calibration_key(corpus_id, doc_id, model, fmt, match): (model, fmt, doc_id)
        for fmt in set(fmts)
        for doc_id in doc_ids
        for model in CALIBRATION_MODELS
    }

    def count(missing: Mapping[str, tuple[str, str, str]]) -> dict[str, ResponseCounts]:
        docs = prepare({d for _, _, d in missing.values()})
        computed = calibration_counts(docs, {f for _, f, _ in missing.values()}, params)
        return {calibration_key(corpus_id, d, m, f, match): c for (m, f, d), c in computed.items()}

    found = _read_or_count(corpus_id, wanted, count)
    return {ident: found[k] for k, ident in wanted.items()}


def stored_response_counts(
    corpus_id: int,
    responses: Sequence[Response],
    formats: Mapping[str, str],
    prepare: Prepare,
    params: MatchParams = MatchParams(),
    elsewhere: Callable[[list[str]], None] | None = None,
) -> Counted:
    """The counts of a run's answers (responses with an output and a job), each computed (and
    stored) only if it was not stored before, by (model, prompt, document id). ``elsewhere`` is
    first given the jobs whose counts are missing, to store them (the worker's scoring processes);
    what is still missing then is computed here."""
    match = params.as_dict()
    wanted = {
        response_key(corpus_id, r.job, formats.get(r.prompt, "none"), match): r
        for r in responses
        if r.output is not None and r.job is not None
    }

    def count(missing: Mapping[str, Response]) -> dict[str, ResponseCounts]:
        docs, memo = prepare({r.doc_id for r in missing.values()}), {}
        return {
            k: count_response(docs[r.doc_id], r.output or "", formats.get(r.prompt, "none"), params, memo)
            for k, r in missing.items()
        }

    send = (lambda missing: elsewhere([r.job for r in missing])) if elsewhere is not None else None
    found = _read_or_count(corpus_id, wanted, count, send)
    return {(r.model, r.prompt, r.doc_id): found[k] for k, r in wanted.items()}
