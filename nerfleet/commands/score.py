"""`nerfleet score`: outputs made anywhere, scored with the fleet's code."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nerfleet.commands.common import USER_ERRORS, fail, print_report


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
    # deferred: seqeval and scikit-learn (0.8 s), not loaded for --help
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
        compared = compare_cells(grid, compare) if compare else None
    except USER_ERRORS as exc:
        fail(exc)
    emit_scores(grid.to_json(), as_json, out, errors, compared, grid=grid)


def cell_ref(ref: str) -> tuple[str, str]:
    model, sep, prompt = ref.rpartition(":")
    if not sep or not model or not prompt:
        raise ValueError(f"--compare {ref!r}: write a cell as MODEL:PROMPT (e.g. qwen2.5-coder-0.5b-instruct:v2)")
    return model, prompt


def compare_cells(grid, refs: tuple[str, str]) -> dict:
    # deferred: seqeval and scikit-learn (0.8 s), not loaded for --help
    from nerfleet.evaluation.grid import compare_cells

    return compare_cells(grid, cell_ref(refs[0]), cell_ref(refs[1]))


def emit_scores(
    scores: dict, as_json: bool, out: Path | None, errors: Path | None, compared: dict | None, grid=None, encoders=None
):
    """Print (and write) a report; ``grid`` (a freshly scored Scores) is needed for ``errors`` only."""
    # deferred: seqeval and scikit-learn (0.8 s), not loaded for --help
    from nerfleet.evaluation.errors import error_records
    from nerfleet.evaluation.report import comparison_table, report_parts, write_reports

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
    print_report([*report_parts(scores, encoders), *([comparison_table(compared)] if compared else [])])


# ------------------------------------------------------------------ models
