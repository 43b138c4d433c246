"""`nerfleet corpus`: build, describe and export the unified corpus."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nerfleet.commands.common import USER_ERRORS, fail
from nerfleet.evaluation.corpus_reader import SOURCE_CORPORA
from nerfleet.evaluation.export import write_conll, write_jsonl

app = typer.Typer(no_args_is_help=True, help="Build, describe and export the unified corpus.")


@app.command("build")
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
    # deferred: sqlmodel (0.35 s), not loaded for --help
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


@app.command("stats")
def corpus_stats(
    corpus: str | None = typer.Option(None, help="Corpus id or name (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Table 1 of the paper for the built corpus, plus documents, tokens, overlaps and splits."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
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


@app.command("export")
def corpus_export(
    out: Path = typer.Argument(..., help="Output file (.conll or .jsonl)."),
    corpus: str | None = typer.Option(None),
    split: str = typer.Option("all", help="train, test or all"),
    fmt: str | None = typer.Option(None, "--format", help="conll or jsonl (default: from the suffix)"),
) -> None:
    """CoNLL (token<TAB>tag) or JSONL (text + spans) for other tools."""
    # deferred: sqlmodel (0.35 s), not loaded for --help
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
