"""All configuration, from environment variables prefixed ``NERFLEET_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NERFLEET_", extra="ignore")

    home: Path = Field(default=Path.home() / ".nerfleet", description="Database, model cache, reports.")
    #: None means: the default Redis, else an embedded one (``nerfleet demo``).
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None
    #: Prefix of every queue name: fleets with different namespaces share one Redis without
    #: taking each other's jobs (nerfleet.tasks.queues).
    namespace: str = ""
    database_url: str | None = None

    #: Jobs per Celery message: the worker generates one message as one batch.
    batch_size: int = 8
    enqueue_chunk: int = 1000
    #: Redis redelivers an unacknowledged message after this long; longer than any batch.
    visibility_timeout_s: int = 6 * 3600
    #: A running job whose lease is not renewed for this long is re-enqueued.
    lease_s: int = 30
    heartbeat_s: float = 10.0
    #: A queued job not (re)sent for this long while its model's queue holds no message has lost
    #: its message (a broker restarted without persistence, flushed): the sweeper sends it again.
    orphan_s: float = 120.0
    #: A run's aggregation claimed this long ago and still not stored is sent again (its message was
    #: lost or its worker died; a duplicate is harmless: only one aggregation stores its metrics).
    aggregation_lease_s: float = 300.0
    sweep_interval_s: float = 15.0
    max_attempts: int = 3
    #: How long a worker waits for the broker and the database at start before it gives up.
    connect_timeout_s: float = 30.0
    max_new_tokens: int = 512
    #: Simple and batched engines compute every row with batch-invariant kernels (CUDA, Triton):
    #: a document's tokens do not depend on its batch, in bf16 too (nerfleet.workers.invariant).
    #: None: on wherever it can run (CUDA with Triton, no sliding window).
    batch_invariant: bool | None = None
    #: The continuous engine's slots (requests decoded at once); None: as many as free GPU memory holds.
    slots: int | None = None
    #: Cache positions per slot (prompt and answer); None: the model's context, at most 4,096.
    slot_len: int | None = None
    #: Share of its GPU's memory a continuous-engine worker may hold, weights included (workers
    #: sharing one GPU: e.g. 0.2 each for four).
    gpu_memory_fraction: float = 0.9
    #: Prompt templates whose tokens before the note the continuous engine prefills once and copies
    #: (workers/prefixes.py); 0: none, every prompt prefilled whole. The random 7B's fleet run on an
    #: H100 prefilled 28% fewer positions with them, in 27% less time (bench/NOTES.md, session 20).
    kept_prefixes: int = 8
    #: Processes a worker scores its stored answers in, while it generates (nerfleet.tasks.scoring);
    #: None: the CPUs less two, at most 4; 0: none (the aggregation scores them all at the end).
    scoring_processes: int | None = None
    redis_ssl_cert_reqs: str = "required"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'nerfleet.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
