"""Calibration rows stored once per document: the echo and oracle counts of a corpus.

Matching the echo (the whole note as an answer) and the oracle is most of an aggregation's scoring
(a harness, ``bench/aggregation.py``, SmolLM2's 1,002 answers on 334 notes: 2.06 s with them
computed, 0.60 s with them read back), yet it depends on the corpus, the format and the matching
parameters only. The producer fills this table right after it enqueues a run (its
GPU work hides the cost); the aggregation reads it and computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from sqlmodel import select

from nerfleet.evaluation.calibration import CALIBRATION_MODELS
from nerfleet.evaluation.grid import calibration_counts
from nerfleet.evaluation.matching import MatchParams
from nerfleet.evaluation.scoring import Known, PreparedDoc, ResponseCounts
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import insert_ignore
from nerfleet.storage.tables import CalibrationCount


def _key(corpus_id: int, doc_id: str, model: str, fmt: str, params: MatchParams) -> str:
    parts = [corpus_id, doc_id, model, fmt, params.as_dict()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def stored_calibration(
    corpus_id: int, docs: dict[str, PreparedDoc], fmts: Iterable[str], params: MatchParams = MatchParams()
) -> Known:
    """The calibration counts of these documents in these formats, each computed (and stored) only
    if no earlier run or producer stored it. No transaction is held while they are computed: on
    SQLite every transaction takes the write lock, and the workers' claims would wait on it."""
    wanted = {
        _key(corpus_id, doc_id, model, fmt, params): (model, fmt, doc_id)
        for fmt in set(fmts)
        for doc_id in docs
        for model in CALIBRATION_MODELS
    }
    known: Known = {}
    keys = list(wanted)
    with session_scope() as session:
        for i in range(0, len(keys), 500):  # bounded IN lists
            for row in session.exec(select(CalibrationCount).where(CalibrationCount.key.in_(keys[i : i + 500]))):
                known[wanted[row.key]] = ResponseCounts.from_json(json.loads(row.counts_json))
    missing = set(wanted.values()) - set(known)
    if missing:
        computed = calibration_counts({d: docs[d] for _, _, d in missing}, {f for _, f, _ in missing}, params)
        rows = [
            {
                "key": _key(corpus_id, doc_id, model, fmt, params),
                "corpus_id": corpus_id,
                "counts_json": json.dumps(c.to_json()),
            }
            for (model, fmt, doc_id), c in computed.items()
        ]
        with session_scope() as session:
            for i in range(0, len(rows), 500):
                insert_ignore(session, CalibrationCount, rows[i : i + 500])
        known.update(computed)
    return known
