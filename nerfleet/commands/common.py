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
    paragraphs as they are, the console as wide as the widest table (rich's own measure), so no
    number is cut whatever the terminal (a pipe counts as 80 columns). The files keep the grid."""
    rendered = [_rich_table(p) if isinstance(p, TextTable) else p for p in parts]
    measure = Console(width=10_000)
    widest = max((measure.measure(t).maximum for t in rendered if isinstance(t, Table)), default=0)
    console = Console(width=max(100, widest, shutil.get_terminal_size().columns))
    for part in rendered:
        console.print(part, highlight=False, markup=False)


def _rich_table(part: TextTable) -> Table:
    table = Table(title=part.title, title_justify="left", caption=part.note or None, caption_justify="left")
    for i, name in enumerate(part.header):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=i >= 2)
    for k, row in enumerate(part.rows):
        table.add_row(*row, end_section=part.rule_before is not None and k == part.rule_before - 1)
    return table
