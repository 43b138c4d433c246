"""The encoder baselines: `finetune`, `training`, `tag`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nerfleet.commands.common import USER_ERRORS, fail
from nerfleet.evaluation.export import TSV_HEADER, mention_tsv_line
from nerfleet.workers.finetune import TrainParams


def finetune(
    encoder: list[str] = typer.Option(
        ["minilm"], "--encoder", help="minilm (embedded), a Table 6 name, HF id or path."
    ),
    epochs: int = typer.Option(TrainParams.epochs, help="Most epochs (the learning rate decays over them)."),
    patience: int = typer.Option(
        TrainParams.patience, help="Stop after this many epochs without a better dev F1 and keep the best; 0: off."
    ),
    seed: int = typer.Option(TrainParams.seed),
    lr: float = typer.Option(TrainParams.lr),
    batch_size: int = typer.Option(TrainParams.batch_size),
    max_length: int = typer.Option(TrainParams.max_length),
    corpus: str | None = typer.Option(None),
    local: bool = typer.Option(False, "--local", help="Train here, in this process, instead of on a training worker."),
) -> None:
    """Enqueue one training job per encoder (Table 6 baselines) for `nerfleet worker --train`."""
    # deferred: sqlmodel, celery and the encoder's torch, not loaded for --help
    from nerfleet.tasks.training import create_training_jobs, run_training_job, send_training_jobs

    params = TrainParams(
        epochs=epochs, patience=patience, seed=seed, lr=lr, batch_size=batch_size, max_length=max_length
    )
    try:
        ids = create_training_jobs(encoder, corpus, params)
        if local:
            for jid in ids:
                run_training_job(jid)
        else:
            send_training_jobs(ids)
    except USER_ERRORS as exc:
        fail(exc)
    for jid in ids:
        typer.echo(jid)
    if local:
        training(None, False)


def training(job_id: str | None = typer.Argument(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Training jobs: state, per-epoch loss and dev F1, and test metrics when done."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
    from sqlmodel import select

    from nerfleet.storage.db import session_scope
    from nerfleet.storage.metrics import encoder_metrics_by_job
    from nerfleet.storage.tables import TrainJob

    with session_scope() as session:
        stmt = select(TrainJob) if job_id is None else select(TrainJob).where(TrainJob.id == job_id)
        jobs = session.exec(stmt).all()
        tests = encoder_metrics_by_job(session, [j.id for j in jobs])
        rows = []
        for j in jobs:
            rows.append(
                {
                    "id": j.id,
                    "encoder": j.encoder,
                    "state": j.state,
                    "epoch": j.epoch,
                    "history": json.loads(j.history_json),
                    "test": tests[j.id],
                    "error": j.error,
                    "checkpoints": j.checkpoint_dir,
                }
            )
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        typer.echo(
            f"{r['id']} {r['encoder']}: {r['state']}, epoch {r['epoch']}" + (f" ({r['error']})" if r["error"] else "")
        )
        for h in r["history"]:
            typer.echo(f"  epoch {h['epoch']}: loss {h['loss']:.4f}, dev F1 {h['dev_f1']:.3f}, {h['seconds']:.0f} s")
        if "micro" in r["test"]:
            m = r["test"]["micro"]
            typer.echo(f"  test micro P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f}")


def tag(
    files: list[Path] = typer.Argument(..., help="Plain-text files to tag."),
    model: Path = typer.Option(..., "--model", help="A trained checkpoint (…/final)."),
    fmt: str = typer.Option("text", "--format", help="text or tsv (the corpora's mentions layout)"),
) -> None:
    """Tag new text with a fine-tuned encoder; tsv writes filename ann_id label start_span end_span text."""
    # deferred: torch and transformers
    from nerfleet.workers.finetune import load_tagger, predict_spans

    if fmt not in ("text", "tsv"):
        fail(ValueError(f"--format {fmt!r}: use text or tsv"))
    try:
        tagger, tokenizer, params = load_tagger(str(model))
    except (OSError, ValueError) as exc:
        fail(ValueError(f"cannot load tagger {model}: {exc}"))
    if fmt == "tsv":
        typer.echo(TSV_HEADER)
    for path in files:
        text = path.read_text(encoding="utf-8")
        for k, s in enumerate(predict_spans(tagger, tokenizer, text, params), start=1):
            if fmt == "tsv":
                typer.echo(mention_tsv_line(path.stem, f"T{k}", text, s))
            else:
                typer.echo(f"{path.name}\t{s.label}\t{s.start}-{s.end}\t{text[s.start : s.end]}")
