from __future__ import annotations

import os
from pathlib import Path

# Triton kernels (the batch-invariant mode's) run on its CPU interpreter in tests. It must be set
# before triton is first imported: triton's own library functions are built at that import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import ROOT, RedisServer, make_tiny_model

#: The real corpus for the tests that need it (README, "Getting the data"); they skip, saying where
#: they looked, when it is not there.
SHARED_DATA = Path(os.environ.get("NERFLEET_TEST_CORPUS", ROOT.parent / "shared" / "data" / "clinical-cases-es"))
DEMO_CORPUS = ROOT / "nerfleet" / "data" / "demo-corpus"


def postgres_url() -> str:
    return os.environ.get("NERFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An isolated nerfleet home and SQLite database, visible to code and subprocesses."""
    from nerfleet.settings import get_settings

    h = tmp_path / "home"
    monkeypatch.setenv("NERFLEET_HOME", str(h))
    monkeypatch.setenv("NERFLEET_DATABASE_URL", f"sqlite:///{h / 'nerfleet.db'}")
    get_settings.cache_clear()
    yield h
    get_settings.cache_clear()


@pytest.fixture
def pg_url(monkeypatch) -> str:
    """A fresh schema-less PostgreSQL database; skipped when none answers, unless CI requires it."""
    import sqlalchemy

    url = postgres_url()
    try:
        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        engine.dispose()
    except Exception as exc:
        if os.environ.get("NERFLEET_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {url}: {exc}")
    from nerfleet.storage.db import dispose_engines

    dispose_engines()
    return url


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def broker(redis_server, monkeypatch) -> str:
    from nerfleet.settings import get_settings

    monkeypatch.setenv("NERFLEET_BROKER_URL", redis_server.url)
    get_settings.cache_clear()
    return redis_server.url


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {name: make_tiny_model(base / name, seed=i) for i, name in enumerate(("tiny-a", "tiny-b"))}


@pytest.fixture
def demo_corpus(home):
    """The bundled corpus, built and stored; returns its id."""
    from nerfleet.storage.corpus_store import build_and_save

    return build_and_save("demo", name="demo")[0].corpus.id
