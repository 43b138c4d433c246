"""A live progress bar over a run's jobs, read from the database, until aggregation is stored."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nerfleet.storage.db import session_scope
from nerfleet.storage.runs import get_run, run_status


def follow(run_id: str, timeout_s: float | None = None, poll_s: float = 1.0, alive=None) -> dict:
    """Returns the final status. ``alive()`` returning False (a dead worker) stops early with an error."""
    start = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(f"run {run_id}", total=None)
        while True:
            with session_scope() as session:
                st = run_status(session, get_run(session, run_id))
            bar.update(
                task,
                total=st["total"],
                completed=st["done"] + st["failed"],
                description=f"run {run_id}: {st['done']} done, {st['failed']} failed, {st['running']} running",
            )
            if st["aggregated"]:
                return st
            if alive is not None and not alive():
                raise RuntimeError(f"the worker stopped before run {run_id} finished (see its log)")
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f} s")
            time.sleep(poll_s)
