"""SQLModel tables: corpus, runs, jobs, generations, metrics.

A job's primary key is its hash (model + revision, prompt text, document,
generation parameters), so a redelivered or repeated job never makes a second row.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import NaiveDatetime
from sqlalchemy import Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Corpus(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int = 1
    source: str
    source_hash: str = Field(unique=True)
    lang: str | None = None
    seed: int
    stats_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class Document(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("corpus_id", "doc_id"),)
    id: int | None = Field(default=None, primary_key=True)
    corpus_id: int = Field(foreign_key="corpus.id", index=True)
    doc_id: str = Field(index=True)
    split: str = Field(index=True)
    text: str = Field(sa_column=Column(Text, nullable=False))
    #: [[start, end, label, source], ...] half-open character offsets, overlaps resolved.
    spans_json: str = Field(sa_column=Column(Text, nullable=False))


class PromptText(SQLModel, table=True):
    hash: str = Field(primary_key=True)
    name: str
    format: str
    template: str = Field(sa_column=Column(Text, nullable=False))
    #: Decoding constrained to ``format`` (a ``+guided`` condition).
    guided: bool = False


class Run(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str
    corpus_id: int = Field(foreign_key="corpus.id")
    spec_json: str = Field(sa_column=Column(Text, nullable=False))
    total: int = 0
    created_at: NaiveDatetime = Field(default_factory=utcnow)
    aggregation_claimed_at: NaiveDatetime | None = None
    aggregated_at: NaiveDatetime | None = None
    aggregation_count: int = 0
    #: The last aggregation's failure, kept until one succeeds (status shows it).
    aggregation_error: str | None = Field(default=None, sa_column=Column(Text))


class Job(SQLModel, table=True):
    hash: str = Field(primary_key=True)
    model: str = Field(index=True)
    prompt: str
    prompt_hash: str
    corpus_id: int = Field(foreign_key="corpus.id")
    doc_id: str
    params_json: str = Field(sa_column=Column(Text, nullable=False))
    state: str = Field(default="queued", index=True)  # queued | running | done | failed
    attempts: int = 0
    lease_until: NaiveDatetime | None = Field(default=None, index=True)
    worker: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: NaiveDatetime = Field(default_factory=utcnow)


class RunJob(SQLModel, table=True):
    run_id: str = Field(foreign_key="run.id", primary_key=True)
    job_hash: str = Field(foreign_key="job.hash", primary_key=True, index=True)


class Generation(SQLModel, table=True):
    job_hash: str = Field(foreign_key="job.hash", primary_key=True)
    output: str = Field(sa_column=Column(Text, nullable=False))
    prompt_tokens: int
    output_tokens: int
    truncated: bool = False
    latency_s: float
    engine: str
    host: str
    gpu: str | None = None
    created_at: NaiveDatetime = Field(default_factory=utcnow)


class ScoredCount(SQLModel, table=True):
    """One scored answer's counts (:mod:`nerfleet.storage.counts`): a calibration row of a note
    (echo or oracle, a format) or a run's answer (its job), under the matching parameters. They
    depend on nothing else, so each is computed once, not at every aggregation."""

    key: str = Field(primary_key=True)  # sha256 of the layout, corpus, answer, format, parameters
    corpus_id: int = Field(foreign_key="corpus.id", index=True)
    counts_json: str = Field(sa_column=Column(Text, nullable=False))


class TrainJob(SQLModel, table=True):
    """One encoder fine-tuning (Table 6 baseline); progress is visible while it runs."""

    id: str = Field(primary_key=True)
    encoder: str
    source: str
    corpus_id: int = Field(foreign_key="corpus.id")
    params_json: str = Field(sa_column=Column(Text, nullable=False))
    state: str = Field(default="queued", index=True)  # queued | running | done | failed
    epoch: int = 0
    history_json: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    checkpoint_dir: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: NaiveDatetime = Field(default_factory=utcnow)


class Metric(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "strategy", "model", "prompt", "category"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    strategy: str  # strategy1 | strategy2 | parse_ratio | nervaluate_<schema> | encoder
    model: str
    prompt: str
    category: str  # DISEASE | SYMPTOM | PROCEDURE | micro | ENTITY | lenient | strict
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    value: float | None = None
    support: int | None = None
    params_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    #: The bootstrap 95% intervals of the row's numbers and the documents they rest on:
    #: {"n": 54, "f1": [low, high], …} (``value`` for ratios); null where none was computed.
    ci_json: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
