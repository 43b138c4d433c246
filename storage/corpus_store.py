"""Corpus versions in the database: a rebuild of the same source is a no-op."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from nerfleet.evaluation.corpus import DEFAULT_SEED, CorpusBuild, build_corpus, read_test_ids
from nerfleet.evaluation.corpus import Document as CorpusDocument
from nerfleet.evaluation.spans import Span
from nerfleet.storage.db import session_scope
from nerfleet.storage.tables import Corpus, Document


@dataclass
class SavedCorpus:
    corpus: Corpus
    created: bool


def save_corpus(build: CorpusBuild, name: str, source: str, lang: str | None, seed: int) -> SavedCorpus:
    """Write a built corpus in one transaction; same content → the existing row."""
    with session_scope() as session:
        existing = session.exec(select(Corpus).where(Corpus.source_hash == build.source_hash)).first()
        if existing is not None:
            return SavedCorpus(existing, False)
        version = (session.exec(select(func.max(Corpus.version)).where(Corpus.name == name)).one() or 0) + 1
        corpus = Corpus(
            name=name,
            version=version,
            source=source,
            source_hash=build.source_hash,
            lang=lang,
            seed=seed,
            stats_json=json.dumps(build.stats),
        )
        session.add(corpus)
        session.flush()
        session.add_all(
            Document(
                corpus_id=corpus.id,
                doc_id=d.doc_id,
                split=d.split,
                text=d.text,
                spans_json=json.dumps([[s.start, s.end, s.label, src] for s, src in zip(d.spans, d.sources)]),
            )
            for d in build.documents
        )
        return SavedCorpus(corpus, True)


def bundled_corpus() -> Path:
    """The demo corpus shipped with the package (with its own test_ids.txt)."""
    return Path(str(resources.files("nerfleet").joinpath("data", "demo-corpus")))


def build_and_save(
    src: Path | str,
    lang: str | None = None,
    seed: int = DEFAULT_SEED,
    test_ids: Path | None = None,
    lenient: bool = False,
    name: str | None = None,
) -> tuple[SavedCorpus, CorpusBuild]:
    """Read a release ("demo": the bundled corpus), merge, split and store it. One split rule
    wherever a folder is built: its own ``test_ids.txt`` when it has one (unless ``test_ids`` names
    another file), else the seeded split."""
    src = bundled_corpus() if str(src) == "demo" else Path(src)
    if test_ids is None and (src / "test_ids.txt").is_file():
        test_ids = src / "test_ids.txt"
    build = build_corpus(src, lang, seed, read_test_ids(test_ids) if test_ids else None, lenient)
    return save_corpus(build, name or src.name, str(src), lang, seed), build


def get_corpus(session: Session, ref: str | int | None = None) -> Corpus:
    """By id, by name (its newest version) or, with no reference, the newest corpus."""
    stmt = select(Corpus).order_by(Corpus.id.desc())
    if ref is not None:
        ref_s = str(ref)
        stmt = stmt.where(Corpus.id == int(ref_s)) if ref_s.isdigit() else stmt.where(Corpus.name == ref_s)
    corpus = session.exec(stmt).first()
    if corpus is None:
        raise LookupError(
            f"no corpus {ref!r} in the database; build one with `nerfleet corpus build`"
            if ref is not None
            else "no corpus in the database; build one with `nerfleet corpus build`"
        )
    return corpus


def to_document(row: Document) -> CorpusDocument:
    raw = json.loads(row.spans_json)
    return CorpusDocument(
        row.doc_id, row.text, [Span(s, e, lab) for s, e, lab, _ in raw], row.split, [src for *_, src in raw]
    )


def load_documents(
    session: Session, corpus_id: int, split: str | None = None, doc_ids: list[str] | None = None
) -> list[CorpusDocument]:
    stmt = select(Document).where(Document.corpus_id == corpus_id)
    if split and split != "all":
        stmt = stmt.where(Document.split == split)
    if doc_ids is not None:
        stmt = stmt.where(Document.doc_id.in_(doc_ids))
    return [to_document(r) for r in session.exec(stmt.order_by(Document.doc_id))]
