"""Training jobs for the encoder baselines (Table 6) on the same fleet: rows written, messages
sent, and the task a `nerfleet worker --train` runs."""

from __future__ import annotations

import json
from collections.abc import Sequence

from nerfleet.tasks.app import app
from nerfleet.workers.finetune import TrainParams


@app.task(name="nerfleet.train", acks_late=True, ignore_result=True)
def train(train_job_id: str) -> None:
    from nerfleet.workers.finetune import run_training_job

    run_training_job(train_job_id)


def create_training_jobs(encoders: Sequence[str], corpus: str | None, params: TrainParams) -> list[str]:
    """One training job per encoder on a corpus; the same encoder, corpus and parameters are the
    same job (written once), so a repeated command resumes it."""
    from nerfleet.storage.corpus_store import get_corpus
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.jobs import insert_ignore
    from nerfleet.storage.tables import TrainJob
    from nerfleet.workers.finetune import encoder_source, job_id_for

    ids = []
    with session_scope() as session:
        c = get_corpus(session, corpus)
        for enc in encoders:
            jid = job_id_for(enc, c.id, params)
            row = {
                "id": jid,
                "encoder": enc,
                "source": encoder_source(enc),
                "corpus_id": c.id,
                "params_json": json.dumps(params.__dict__),
                "state": "queued",
                "epoch": 0,
                "history_json": "[]",
            }
            insert_ignore(session, TrainJob, [row])
            ids.append(jid)
    return ids


def send_training_jobs(ids: Sequence[str]) -> None:
    """A message per job to the training queue, for `nerfleet worker --train`."""
    from nerfleet.tasks.dispatch import RETRY_POLICY
    from nerfleet.tasks.queues import train_queue

    for jid in ids:
        app.send_task("nerfleet.train", args=[jid], queue=train_queue(), retry=True, retry_policy=RETRY_POLICY)
