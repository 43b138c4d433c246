"""What every command shares: the user errors that end in one line, and how that line is written."""

from __future__ import annotations

import typer


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
