"""The same storage code on SQLite and PostgreSQL: idempotent writes, conditional claims."""

import json
import multiprocessing
import os
import time

import pytest
from sqlmodel import select

from nerfleet.storage.db import get_engine, session_scope
from nerfleet.storage.jobs import claim, claim_aggregation, finish, insert_ignore, renew
from nerfleet.storage.tables import Corpus, Generation, Job, Run, RunJob


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'x.db'}"
    return request.getfixturevalue("pg_url")


def seed(url):
    with session_scope(url) as s:
        s.add(Corpus(id=1, name="c", source="x", source_hash="h", seed=1, stats_json="{}"))
        s.add(Run(id="r1", name="r1", corpus_id=1, spec_json="{}", total=2))
        s.flush()
        rows = [
            dict(
                hash=f"j{i}",
                model="m",
                prompt="v1",
                prompt_hash="p",
                corpus_id=1,
                doc_id=f"d{i}",
                params_json=json.dumps({"max_new_tokens": 4}),
                state="queued",
                attempts=0,
            )
            for i in range(2)
        ]
        assert insert_ignore(s, Job, rows) == 2
        assert insert_ignore(s, Job, rows) == 0  # again: nothing
        insert_ignore(s, RunJob, [{"run_id": "r1", "job_hash": r["hash"]} for r in rows])


def gen_row(h):
    return {
        "job_hash": h,
        "output": "x",
        "prompt_tokens": 1,
        "output_tokens": 1,
        "truncated": False,
        "latency_s": 0.1,
        "engine": "t",
        "host": "h",
        "gpu": None,
    }


def test_claims_are_exclusive_and_writes_idempotent(db):
    get_engine(db)
    seed(db)
    with session_scope(db) as s:
        got, failed = claim(s, ["j0", "j1"], "m", "w1", lease_s=60, max_attempts=3)
        assert [c.hash for c in got] == ["j0", "j1"] and failed == []
    with session_scope(db) as s:
        got2, _ = claim(s, ["j0", "j1"], "m", "w2", lease_s=60, max_attempts=3)
        assert got2 == []  # leased to w1
        assert claim(s, ["j0"], "other-model", "w2", 60, 3) == ([], [])
        assert renew(s, ["j0", "j1"], "w1", 60) == 2
        assert renew(s, ["j0"], "w2", 60) == 0
    with session_scope(db) as s:
        assert not claim_aggregation(s, "r1")
        finish(s, [gen_row("j0"), gen_row("j1")])
    with session_scope(db) as s:
        finish(s, [gen_row("j0")])  # a redelivered job writes nothing new
    with session_scope(db) as s:
        assert len(s.exec(select(Generation)).all()) == 2
        assert claim_aggregation(s, "r1") is True
    with session_scope(db) as s:
        assert claim_aggregation(s, "r1") is False  # exactly one claimant


def test_expired_lease_can_be_reclaimed_and_attempts_counted(db):
    get_engine(db)
    seed(db)
    with session_scope(db) as s:
        claim(s, ["j0"], "m", "w1", lease_s=-1, max_attempts=2)  # already expired
    with session_scope(db) as s:
        got, _ = claim(s, ["j0"], "m", "w2", lease_s=60, max_attempts=2)
        assert [c.hash for c in got] == ["j0"]
    with session_scope(db) as s:
        s.get(Job, "j0").lease_until = None
        job = s.get(Job, "j0")
        job.state, job.attempts = "queued", 2
        s.add(job)
    with session_scope(db) as s:
        got, failed = claim(s, ["j0"], "m", "w3", lease_s=60, max_attempts=2)
        assert got == [] and failed == ["j0"]
        assert s.get(Job, "j0").state == "failed"
        assert s.get(Job, "j0").error == "gave up after 2 attempts (worker lost or crashed)"


def test_calibration_rows_are_stored_once_and_score_as_if_computed(home, broker, demo_corpus, monkeypatch):
    """The producer stores the echo and oracle counts of a run's notes once it has enqueued the
    run; the aggregation reads them back (JSON through the database), and the tables are exactly
    those of computing them afresh."""
    from nerfleet.evaluation.grid import score_grid
    from nerfleet.evaluation.scoring import Response, prepare
    from nerfleet.storage.corpus_store import load_documents
    from nerfleet.storage.counts import stored_calibration
    from nerfleet.storage.tables import ScoredCount
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.producer import create_run

    create_run(["smollm2"], ["v1", "v2", "v3"], "all", 3, 4, None, str(demo_corpus), app=make_app())
    with session_scope() as s:
        assert len(s.exec(select(ScoredCount)).all()) == 3 * 2 * 3  # notes × echo, oracle × formats
        docs = {d.doc_id: prepare(d) for d in load_documents(s, demo_corpus)[:3]}
    import nerfleet.storage.counts as calibration

    def never(*args):
        raise AssertionError("stored calibration rows were computed again")

    with monkeypatch.context() as m:
        m.setattr(calibration, "calibration_counts", never)  # all 18 are read, none computed
        known = stored_calibration(demo_corpus, docs, ["none", "dict", "json"], lambda ids: docs)
    assert len(known) == 18
    formats = {"v1": "none", "v2": "dict", "v3": "json"}
    responses = [
        Response(doc_id, "m", prompt, d.document.text[: 40 * (k + 1)])
        for k, (doc_id, d) in enumerate(sorted(docs.items()))
        for prompt in formats
    ]
    fresh = score_grid(responses, docs, formats).to_json()
    assert score_grid(responses, docs, formats, known=known).to_json() == fresh
    assert fresh["strategy1"]["echo"]["v1"]["f1"] > 0.9  # the rows are real, not empty


def test_calibration_is_computed_with_no_write_lock_held(home, demo_corpus, monkeypatch):
    """On SQLite every transaction takes the write lock (BEGIN IMMEDIATE): computing the echo and
    oracle rows inside one made every worker's claim wait for seconds. While they are computed,
    another connection can write at once."""
    import sqlite3

    from nerfleet.evaluation.scoring import prepare
    from nerfleet.storage import counts as calibration
    from nerfleet.storage.corpus_store import load_documents

    with session_scope() as s:
        docs = {d.doc_id: prepare(d) for d in load_documents(s, demo_corpus)[:2]}
    real, wrote = calibration.calibration_counts, []

    def compute_while_another_writes(*args):
        other = sqlite3.connect(home / "nerfleet.db", timeout=0.2)
        other.execute("BEGIN IMMEDIATE")  # sqlite3.OperationalError "database is locked" if one is held
        other.rollback()
        wrote.append(True)
        return real(*args)

    monkeypatch.setattr(calibration, "calibration_counts", compute_while_another_writes)
    assert len(calibration.stored_calibration(demo_corpus, docs, ["json"], lambda ids: docs)) == 4
    assert wrote == [True]


def test_answers_scored_by_scoring_processes_aggregate_as_if_computed(home, broker, demo_corpus, monkeypatch):
    """A worker's scoring processes (spawned, real) score its stored answers and store their
    counts at a lower CPU priority; the aggregation then reads every count and computes none
    itself, and its scores are exactly those of scoring the answers afresh."""
    from nerfleet.evaluation.grid import score_grid
    from nerfleet.evaluation.scoring import prepare
    from nerfleet.storage import counts
    from nerfleet.storage.corpus_store import load_documents
    from nerfleet.storage.tables import ScoredCount
    from nerfleet.tasks import aggregation, scoring
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.producer import create_run

    plan = create_run(["smollm2"], ["v1", "v2", "v3"], "all", 4, 4, None, str(demo_corpus), app=make_app())
    with session_scope() as s:
        jobs = s.exec(select(Job)).all()
        texts = {d.doc_id: d for d in load_documents(s, demo_corpus)}
        rows = []
        for k, j in enumerate(sorted(jobs, key=lambda j: j.hash)):
            d = texts[j.doc_id]
            picked = [d.text[sp.start : sp.end] for sp in d.spans][: k % 4 + 1]  # some gold, some not
            output = {"v1": ", ".join(picked), "v2": "{diseases: [" + ", ".join(picked) + "]}"}.get(
                j.prompt,
                '{"annotations": [' + ", ".join(f'{{"entity": "{p}", "category": "disease"}}' for p in picked) + "]}",
            )
            rows.append(dict(job_hash=j.hash, output=output, prompt_tokens=1, output_tokens=1, latency_s=0.0,
                             engine="stored", host="here"))  # fmt: skip
        finish(s, rows)
        responses, formats = aggregation.collect_responses(s, plan.run_id)
    docs = {d: prepare(texts[d]) for d in {r.doc_id for r in responses}}
    fresh = score_grid(responses, docs, formats).to_json()

    hashes = [r["job_hash"] for r in rows]
    assert scoring.start(2) == 2
    try:
        scoring.submit(hashes[:5])  # as the generation task does after storing a message's answers
        scoring.settle()
        # each scoring process yields the CPU to the engine (as it starts: one may still be starting)
        lowered = [min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)] * 2
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nice = [os.getpriority(os.PRIO_PROCESS, c.pid) for c in multiprocessing.active_children()]
            if nice == lowered:
                break
            time.sleep(0.1)
        assert nice == lowered
        with session_scope() as s:
            assert len(s.exec(select(ScoredCount)).all()) == 4 * 2 * 3 + 5  # calibration rows (producer) + 5

        def never(*args):
            raise AssertionError("counts computed in the aggregating process")

        # the aggregation has the pool score the answers still missing, and computes nothing itself
        monkeypatch.setattr(counts, "count_response", never)
        monkeypatch.setattr(counts, "calibration_counts", never)
        got = aggregation.aggregate_run(plan.run_id)
        with session_scope() as s:
            assert len(s.exec(select(ScoredCount)).all()) == 4 * 2 * 3 + len(hashes)
    finally:
        scoring.stop()
    assert got == fresh
    assert 0 < fresh["strategy2"]["smollm2"]["v2"]["micro"]["recall"] < 1  # the answers are real, not empty


def test_a_messages_answers_are_scored_across_the_scoring_processes(home, broker, demo_corpus):
    """The answers of one stored message go to every scoring process in parts (a run's last message
    is scored while its aggregation waits), each answer once, and all their counts are stored."""
    from nerfleet.storage.tables import ScoredCount
    from nerfleet.tasks import scoring
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.producer import create_run

    create_run(["smollm2"], ["v1", "v2"], "all", 8, 4, None, str(demo_corpus), app=make_app())
    with session_scope() as s:
        hashes = [j.hash for j in s.exec(select(Job))]
        finish(s, [dict(job_hash=h, output="fiebre", prompt_tokens=1, output_tokens=1, latency_s=0.0,
                        engine="stored", host="here") for h in hashes])  # fmt: skip
        before = len(s.exec(select(ScoredCount)).all())
    assert len(hashes) == 16
    assert scoring.start(2) == 2
    parts: list[list[str]] = []
    pool_submit = scoring._pool.submit

    def recorded(fn, *args):
        if fn is scoring.score_jobs:
            parts.append(list(args[0]))
        return pool_submit(fn, *args)

    scoring._pool.submit = recorded
    try:
        scoring.submit(hashes)
        scoring.settle()
    finally:
        scoring.stop()
    assert [len(p) for p in parts] == [8, 8] and sorted(sum(parts, [])) == sorted(hashes)
    with session_scope() as s:
        assert len(s.exec(select(ScoredCount)).all()) == before + len(hashes)


def test_a_scoring_process_killed_loses_nothing(home, broker, demo_corpus):
    """A scoring process that dies (SIGKILL, out of memory) breaks the pool: the worker drops it,
    the generation task is not failed by it, and the aggregation counts the answers itself."""
    import signal

    from nerfleet.tasks import aggregation, scoring
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.producer import create_run

    plan = create_run(["smollm2"], ["v2"], "all", 3, 4, None, str(demo_corpus), app=make_app())
    with session_scope() as s:
        hashes = [j.hash for j in s.exec(select(Job))]
        finish(s, [dict(job_hash=h, output="{diseases: [fiebre]}", prompt_tokens=1, output_tokens=1,
                        latency_s=0.0, engine="stored", host="here") for h in hashes])  # fmt: skip
    assert scoring.start(1) == 1
    try:
        scoring.settle()
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)
            child.join(10)
        scoring.submit(hashes)  # no exception: the pool is given up
        scoring.settle()
        got = aggregation.aggregate_run(plan.run_id)
    finally:
        scoring.stop()
    assert got["counts"]["smollm2"]["v2"] == {"scored": 3, "failed": 0}


def test_a_read_scope_leaves_the_write_lock_free(home, demo_corpus):
    """What the scoring processes and the aggregation only read takes no write lock on SQLite
    (every other transaction begins IMMEDIATE): a writer elsewhere goes on at once meanwhile."""
    import sqlite3

    from nerfleet.storage.db import read_scope
    from nerfleet.storage.tables import Document

    with read_scope() as s:
        assert len(s.exec(select(Document)).all()) > 0
        other = sqlite3.connect(home / "nerfleet.db", timeout=0.2)
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if the read held the lock
        other.rollback()
    with session_scope() as s:
        assert len(s.exec(select(Document)).all()) > 0
        other = sqlite3.connect(home / "nerfleet.db", timeout=0.2)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")  # an ordinary transaction does hold it
