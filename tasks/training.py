"""Training jobs for the encoder baselines (Table 6) on the same fleet."""

from __future__ import annotations

from nerfleet.tasks.app import app


@app.task(name="nerfleet.train", acks_late=True, ignore_result=True)
def train(train_job_id: str) -> None:
    from nerfleet.workers.finetune import run_training_job

    run_training_job(train_job_id)
