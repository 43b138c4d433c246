"""One engine per process, created lazily (never shared across a fork).

SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` writes so that several
worker processes can write without "database is locked".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from nerfleet.settings import get_settings
from nerfleet.storage import tables  # noqa: F401  (registers the tables)

_engines: dict[tuple[int, str], Engine] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


#: The execution option that marks a read-only transaction (read_scope).
_READ = "nerfleet_read_only"


def _begin(conn) -> None:
    # a transaction that only reads (read_scope) takes no write lock: in WAL mode readers and the
    # one writer never wait for each other
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ) else "BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().db_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _begin)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        SQLModel.metadata.create_all(engine)
        _add_missing_columns(engine)
        _engines[key] = engine
    return engine


#: Columns added after a table first shipped: (table, column, SQL type). create_all makes
#: missing tables only, so a database made by an older nerfleet gets these here, once.
ADDED_COLUMNS = (
    ("metric", "ci_json", "TEXT"),
    ("prompttext", "guided", "BOOLEAN NOT NULL DEFAULT FALSE"),
    ("run", "aggregation_error", "TEXT"),
)


def _add_missing_columns(engine: Engine) -> None:
    inspector = inspect(engine)
    for table, column, sql_type in ADDED_COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with Session(get_engine(url), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction that only reads, ended (never committed) with its session, whose objects stay
    readable. On SQLite it does not take the write lock that every other transaction takes at its
    start: the workers' scoring processes read answers and notes all run long without making the
    workers' claims and stores wait."""
    with Session(get_engine(url).execution_options(**{_READ: True}), expire_on_commit=False) as session:
        yield session


def is_sqlite(url: str | None = None) -> bool:
    return get_engine(url).dialect.name == "sqlite"


def dispose_engines() -> None:
    """Forget this process's engines (after a fork, or when a database was recreated)."""
    for key in [k for k in _engines if k[0] == os.getpid()]:
        _engines.pop(key).dispose()
