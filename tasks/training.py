"""Training jobs for the encoder baselines (Table 6) on the same fleet: rows written, messages
sent, and the task a `nerfleet worker --train` runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from nerfleet.settings import get_settings
from nerfleet.storage.corpus_store import get_corpus, load_documents
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import insert_ignore
from nerfleet.storage.metrics import encoder_rows, replace_metrics
from nerfleet.storage.tables import TrainJob, utcnow
from nerfleet.tasks.app import app
from nerfleet.tasks.dispatch import RETRY_POLICY
from nerfleet.tasks.queues import train_queue
from nerfleet.workers.finetune import TrainParams, encoder_source, job_id_for


@app.task(name="nerfleet.train", acks_late=True, ignore_result=True)
def train(train_job_id: str) -> None:
    run_training_job(train_job_id)


def create_training_jobs(encoders: Sequence[str], corpus: str | None, params: TrainParams) -> list[str]:
    """One training job per encoder on a corpus; the same encoder, corpus and parameters are the
    same job (written once), so a repeated command resumes it."""
    with session_scope() as session:
        c = get_corpus(session, corpus)
        rows = [
            {
                "id": job_id_for(enc, c.id, params),
                "encoder": enc,
                "source": encoder_source(enc),
                "corpus_id": c.id,
                "params_json": json.dumps(asdict(params)),
                "state": "queued",
                "epoch": 0,
                "history_json": "[]",
            }
            for enc in encoders
        ]
        insert_ignore(session, TrainJob, rows)
    return [r["id"] for r in rows]


def send_training_jobs(ids: Sequence[str]) -> None:
    """A message per job to the training queue, for `nerfleet worker --train`."""
    for jid in ids:
        app.send_task("nerfleet.train", args=[jid], queue=train_queue(), retry=True, retry_policy=RETRY_POLICY)


def run_training_job(job_id: str) -> None:
    from nerfleet.workers.encoder_trainer import train as train_encoder  # transformers' Trainer: heavy

    with session_scope() as s:
        job = s.get(TrainJob, job_id)
        if job is None or job.state == "done":
            return
        job.state, job.updated_at = "running", utcnow()
        out_dir = Path(job.checkpoint_dir or get_settings().home / "checkpoints" / job_id)
        job.checkpoint_dir = str(out_dir)
        s.add(job)
        params = TrainParams(**json.loads(job.params_json))
        train_docs = load_documents(s, job.corpus_id, "train")
        test_docs = load_documents(s, job.corpus_id, "test")
        source, encoder = job.source, job.encoder

    def progress(epoch, history):
        with session_scope() as s2:
            row = s2.get(TrainJob, job_id)
            row.epoch, row.history_json, row.updated_at = epoch, json.dumps(history), utcnow()
            s2.add(row)

    try:
        result = train_encoder(job_id, source, train_docs, test_docs, params, out_dir, progress)
    except Exception as exc:
        with session_scope() as s:
            row = s.get(TrainJob, job_id)
            row.state, row.error = "failed", f"{type(exc).__name__}: {exc}"
            s.add(row)
        raise
    with session_scope() as s:  # metrics and "done" in one transaction
        params_record = {"train": asdict(params), "seqeval": {"mode": "strict", "scheme": "IOB2"}}
        replace_metrics(s, job_id, encoder_rows(job_id, encoder, result["metrics"], params_record))
        row = s.get(TrainJob, job_id)
        row.state, row.history_json, row.updated_at = "done", json.dumps(result["history"]), utcnow()
        s.add(row)
