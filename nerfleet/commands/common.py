"""What every command shares: the user errors that end in one line, and how that line is written;
reports printed as ``rich`` tables."""

from __future__ import annotations

import shutil

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from nerfleet.evaluation.report import TextTable
from nerfleet.settings import get_settings
from nerfleet.tasks.broker import redacted

#: Errors a user's input or set-up causes: a command ends them with one line, not a traceback.
USER_ERRORS = (ValueError, LookupError, ConnectionError, FileNotFoundError, RuntimeError, SQLAlchemyError)


def fail(exc: BaseException) -> None:

    if isinstance(exc, SQLAlchemyError):
        url = redacted(get_settings().db_url)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        typer.echo(f"error: database {url}: {reason}", err=True)
        raise typer.Exit(2)
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def print_report(parts: list) -> None:
    """A report's parts (:func:`nerfleet.evaluation.report.report_parts`) on the terminal: each
    table through ``rich`` (labels left, numbers right, the calibration rows below a rule), the
    paragraphs as they are. The report files keep the plain grid."""
    tables = [p for p in parts if isinstance(p, TextTable)]
    widest = max((len(line) for t in tables for line in t.text().splitlines()[1:3]), default=0)
    # wide enough for every table's numbers whatever the terminal (a pipe counts as 80 columns)
    console = Console(width=max(100, widest + 4 * 8, shutil.get_terminal_size().columns))
    for part in parts:
        if not isinstance(part, TextTable):
            console.print(part, highlight=False, markup=False)
            continue
        table = Table(title=part.title, title_justify="left", caption=part.note or None, caption_justify="left")
        for i, name in enumerate(part.header):
            table.add_column(name, justify="left" if i < 2 else "right")
        for k, row in enumerate(part.rows):
            table.add_row(*row, end_section=part.rule_before is not None and k == part.rule_before - 1)
        console.print(table)
