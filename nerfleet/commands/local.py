"""Everything on one machine: `demo`, and Flower (`monitor`)."""

from __future__ import annotations

from pathlib import Path

import typer

from nerfleet.commands.common import USER_ERRORS, fail
from nerfleet.demo import run_demo
from nerfleet.monitor import start_flower


def demo(
    limit: int = typer.Option(4, help="Test documents to run (the bundled corpus has 4)."),
    corpus: Path | None = typer.Option(None, help="A release folder instead of the bundled corpus."),
    model: str = typer.Option("smollm2"),
    max_new_tokens: int = typer.Option(128),
) -> None:
    """A full small benchmark on one machine with no configuration: corpus, broker, worker, run, tables."""
    try:
        run_demo(limit=limit, corpus=corpus, model=model, max_new_tokens=max_new_tokens)
    except USER_ERRORS as exc:
        fail(exc)


def monitor(
    address: str = typer.Option("127.0.0.1", help="Listen address; beyond loopback, basic auth is required."),
    port: int = typer.Option(5555),
) -> None:
    """Flower, with basic auth (FLOWER_BASIC_AUTH=user:pass) required when listening beyond loopback."""
    try:
        start_flower(address, port)
    except USER_ERRORS as exc:
        fail(exc)
