"""The lease keeper: a worker renews the leases of the jobs in hand while it generates them, so
the sweeper takes back only the jobs of a worker that died (``NERFLEET_LEASE_S``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from nerfleet.settings import get_settings
from nerfleet.storage.db import session_scope
from nerfleet.storage.jobs import renew

log = logging.getLogger(__name__)


@contextmanager
def lease_keeper(hashes: Sequence[str], worker: str) -> Iterator[None]:
    """Renew the leases of the jobs in hand while they run (a heartbeat in the database)."""
    s = get_settings()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(s.heartbeat_s):
            try:
                with session_scope() as session:
                    renew(session, hashes, worker, s.lease_s)
            except Exception as exc:  # a missed beat is retried at the next one
                log.warning("lease renewal failed: %s", exc)

    thread = threading.Thread(target=beat, name="nerfleet-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
