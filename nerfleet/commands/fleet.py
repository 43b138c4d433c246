"""Driving the fleet: `run`, `worker`, `status`, `report`, `export`, `aggregate`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from nerfleet.commands.common import USER_ERRORS, fail
from nerfleet.commands.score import compare_cells, emit_scores
from nerfleet.evaluation.report import long_csv
from nerfleet.workers.models import with_revision


def run(
    model: list[str] = typer.Option(
        ..., "--model", help="Registered name, local path, .gguf or HF id (org/name[@revision]); repeatable."
    ),
    prompt: list[str] = typer.Option(
        ["v1", "v2", "v3"], "--prompt", help="v1, v2, v3, a prompt .toml, or one with +guided; repeatable."
    ),
    split: str = typer.Option("test"),
    limit: int | None = typer.Option(None, help="First N documents of the split."),
    max_new_tokens: int | None = typer.Option(None),
    budgets: Path | None = typer.Option(
        None,
        help="A JSON object of document id -> max_new_tokens for that document's jobs (answers known to "
        "differ in length: a previous run's lengths); the others keep --max-new-tokens.",
    ),
    name: str | None = typer.Option(None, help="Run name (default: a hash of the run's content)."),
    corpus: str | None = typer.Option(None),
    retry_failed: bool = typer.Option(False, help="Give failed jobs of this run another set of attempts."),
    guided: bool = typer.Option(
        False,
        help="Add the conditions v2+guided and v3+guided: the same prompts, decoding constrained to their format.",
    ),
    wait: bool = typer.Option(False, help="Follow the run until it is aggregated, then print the report."),
    revision: str | None = typer.Option(
        None, help="Branch, tag or commit for every Hugging Face id given without @revision."
    ),
) -> None:
    """Create (or resume) a run and enqueue its jobs; the last line printed is the run id."""
    # deferred: sqlmodel and celery, not loaded for --help
    from nerfleet.tasks.producer import create_run
    from nerfleet.workers.models import with_revision

    model = [with_revision(m, revision) for m in model]
    if guided:
        prompt = list(prompt) + [f"{p}+guided" for p in ("v2", "v3") if f"{p}+guided" not in prompt]
    try:
        own = read_budgets(budgets) if budgets else None
        with Progress(transient=True) as bar:
            task = bar.add_task("enqueueing", total=None)
            plan = create_run(
                model,
                prompt,
                split,
                limit,
                max_new_tokens,
                name,
                corpus,
                retry_failed,
                progress=lambda n: bar.advance(task, n),
                budgets=own,
            )
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"run {plan.run_id}: {plan.total} jobs, {plan.already_done} already finished, {plan.enqueued} enqueued")
    if plan.enqueued:
        warn_unserved(plan.models)
    if wait:
        # deferred: sqlmodel (0.35 s), not loaded for --help
        from nerfleet.follow import follow

        follow(plan.run_id)
        report(plan.run_id, fmt="table", out=None, errors=None, compare=None)
    typer.echo(plan.run_id)


def read_budgets(path: Path) -> dict[str, int]:
    """``--budgets``: a JSON object of document ids to positive token counts; a bad entry is
    refused with the file and the document named."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of document id -> max_new_tokens")
    for doc, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: document {doc!r}: max_new_tokens must be a positive integer, not {value!r}")
    return data


def warn_unserved(models) -> None:
    """One line on stderr per model whose queue no live worker consumes: its jobs wait until one starts."""
    # deferred: celery, not loaded for --help
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.dispatch import consumers
    from nerfleet.tasks.queues import generation_queue

    try:
        live = consumers(make_app(), models)
    except Exception as exc:  # noqa: BLE001 - a warning about warnings must not fail the run
        typer.echo(f"warning: could not ask the workers which queues they consume ({exc})", err=True)
        return
    for m in models:
        if not live[m]:
            typer.echo(
                f"warning: no live worker consumes {generation_queue(m)}: its jobs wait there until one starts "
                f"(`nerfleet worker --model {m}`; is the name right?)",
                err=True,
            )


def worker(
    model: str | None = typer.Option(None, help="The one model this worker loads."),
    gpu: str | None = typer.Option(None, help="GPU index to pin, or 'all' for one worker per GPU."),
    engine: str = typer.Option(
        "auto",
        help="auto (continuous on CUDA, else batched), continuous (slots refilled as answers end), "
        "batched, simple, or module:Class",
    ),
    train: bool = typer.Option(False, "--train", help="A training worker (encoder baselines) instead."),
    loglevel: str = typer.Option("INFO"),
    name: str | None = typer.Option(None, help="Celery node name (default: MODEL-gpuN@host)."),
    revision: str | None = typer.Option(None, help="Branch, tag or commit of a Hugging Face id given without @."),
) -> None:
    """A Celery worker pinned to one GPU that loads ONE model once and generates."""
    # deferred: the worker pins its GPU before anything imports torch
    from nerfleet.tasks.launch import spawn_per_gpu, start_train_worker, start_worker

    if not model and not train:
        fail(ValueError("--model is required (or --train): the one model this worker loads"))
    try:
        if gpu == "all":
            argv = list(sys.argv[1:])
            i = argv.index("--gpu")
            del argv[i : i + 2]
            raise typer.Exit(spawn_per_gpu(argv))
        if train:
            start_train_worker(gpu, loglevel)
        else:
            start_worker(with_revision(model, revision), gpu, engine, loglevel, name)
    except USER_ERRORS as exc:
        fail(exc)


def status(run_id: str | None = typer.Argument(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts per model × prompt: queued, running, done, failed."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
    from sqlmodel import select

    from nerfleet.storage.db import session_scope
    from nerfleet.storage.runs import STATES, get_run, run_status
    from nerfleet.storage.tables import Run

    try:
        with session_scope() as session:
            if run_id is None and session.exec(select(Run).limit(1)).first() is None:
                typer.echo(json.dumps(None) if as_json else "no runs yet: start one with `nerfleet run --model M`")
                return
            st = run_status(session, get_run(session, run_id))
    except USER_ERRORS as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(st))
        return
    typer.echo(
        f"run {st['run']} ({st['name']}): {st['done']}/{st['total']} done, {st['failed']} failed, "
        f"{st['retried']} tried more than once (at most {st['max_attempts']} tries a job), "
        f"aggregated: {'yes' if st['aggregated'] else 'no'}"
    )
    if st.get("aggregation_error"):
        typer.echo(f"aggregation failed: {st['aggregation_error']} (retried; `nerfleet aggregate {st['run']}` by hand)")

    console = Console(width=max(100, shutil.get_terminal_size().columns))
    table = Table("model", "prompt", *STATES)
    for model_name, cells in sorted(st["cells"].items()):
        for p, counts in sorted(cells.items()):
            table.add_row(model_name, p, *(str(counts[s]) for s in STATES))
    console.print(table)
    waiting = sorted(m for m, cells in st["cells"].items() if any(c["queued"] + c["running"] for c in cells.values()))
    if waiting:  # which queue each unfinished model waits on, and who consumes it
        # deferred: celery, not loaded for --help
        from nerfleet.tasks.app import make_app
        from nerfleet.tasks.dispatch import consumers
        from nerfleet.tasks.queues import generation_queue

        try:
            live = consumers(make_app(), waiting)
        except Exception as exc:  # noqa: BLE001 - the counts above stand without it
            typer.echo(f"(workers not asked: {exc})")
            return
        queues = Table("model", "queue", "live workers", title="Waiting")
        for m in waiting:
            workers = ", ".join(sorted(live[m])) or "none: start `nerfleet worker --model`"
            queues.add_row(m, generation_queue(m), workers)
        console.print(queues)


def report(
    run_id: str | None = typer.Argument(None, help="Run id or name (default: the newest run)."),
    fmt: str = typer.Option("table", "--format", help="table, csv (long form: one row per number) or json"),
    out: Path | None = typer.Option(None, help="Folder for all report files."),
    errors: Path | None = typer.Option(None, help="Re-score the run and write per-document errors as JSONL."),
    compare: tuple[str, str] | None = typer.Option(
        None, help="Two cells MODEL:PROMPT MODEL:PROMPT: paired bootstrap p-values (re-scores the run)."
    ),
) -> None:
    """The paper-shaped tables of an aggregated run, with intervals and calibration rows."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.metrics import encoder_scores
    from nerfleet.storage.runs import get_run, run_scores

    if fmt not in ("table", "csv", "json"):
        fail(ValueError(f"--format {fmt!r}: use table, csv or json"))
    try:
        with session_scope() as session:
            run_row = get_run(session, run_id)
            if run_row.aggregated_at is None:
                raise LookupError(f"run {run_row.id} is not aggregated yet (see `nerfleet status {run_row.id}`)")
            scores = run_scores(session, run_row)
            encoders = encoder_scores(session)
        grid = compared = None
        if errors or compare:
            # deferred: seqeval and scikit-learn (0.8 s), not loaded for --help
            from nerfleet.tasks.aggregation import score_run

            grid = score_run(run_row.id, errors=bool(errors))
            compared = compare_cells(grid, compare) if compare else None
    except USER_ERRORS as exc:
        fail(exc)
    if fmt == "csv":
        typer.echo(long_csv(scores, encoders), nl=False)
        return
    emit_scores(scores, fmt == "json", out, errors, compared, grid=grid, encoders=encoders)


def export(run_id: str | None = typer.Argument(None), out: Path | None = typer.Option(None)) -> None:
    """The run's outputs as JSONL in the `nerfleet score` format."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.runs import export_lines, get_run

    try:
        with session_scope() as session:
            lines = list(export_lines(session, get_run(session, run_id)))
    except USER_ERRORS as exc:
        fail(exc)
    text = "\n".join(lines) + ("\n" if lines else "")
    if out:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{len(lines)} responses written to {out}", err=True)
    else:
        sys.stdout.write(text)


def aggregate(run_id: str = typer.Argument(...)) -> None:
    """Re-run a run's aggregation by hand (replaces its stored metrics)."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.runs import get_run
    from nerfleet.tasks.aggregation import aggregate_run

    try:
        with session_scope() as session:
            rid = get_run(session, run_id).id
        aggregate_run(rid, force=True)
    except USER_ERRORS as exc:
        fail(exc)
    report(rid, fmt="table", out=None, errors=None, compare=None)
