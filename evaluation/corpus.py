"""Merges the three source corpora into one IOB-labelled set, with a train/test split."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerfleet.evaluation.corpus_reader import CorpusError, SourceCorpus, find_corpora, read_corpus, read_utf8
from nerfleet.evaluation.spans import LABELS, Span, boundary_splits, keep_longest, tokenize_for_spans

#: The study's proportion: 90 test documents of 1000.
TEST_FRACTION = 90 / 1000
DEFAULT_SEED = 13


@dataclass
class Document:
    doc_id: str
    text: str
    spans: list[Span]
    split: str = "train"
    #: Per kept span, the source corpus it came from (for Table 1).
    sources: list[str] = field(default_factory=list)


@dataclass
class CorpusBuild:
    documents: list[Document]
    stats: dict[str, Any]
    source_hash: str


def _split(doc_ids: Sequence[str], seed: int, test_ids: Sequence[str] | None) -> set[str]:
    if test_ids is not None:
        unknown = sorted(set(test_ids) - set(doc_ids))
        if unknown:
            raise CorpusError(f"--test-ids: {len(unknown)} unknown document ids, first {unknown[0]!r}")
        return set(test_ids)
    n_test = max(1, round(len(doc_ids) * TEST_FRACTION)) if len(doc_ids) > 1 else 0
    return set(random.Random(seed).sample(sorted(doc_ids), n_test))


def merge(
    sources: Sequence[SourceCorpus], seed: int = DEFAULT_SEED, test_ids: Sequence[str] | None = None
) -> CorpusBuild:
    """Merge per document over the documents all sources share."""
    if not sources:
        raise CorpusError("no source corpus given")
    shared = set.intersection(*(set(s.texts) for s in sources))
    if not shared:
        raise CorpusError("the source corpora share no document")
    trailing_ws_differences = 0
    for s in sources[1:]:
        for doc_id in shared:
            a, b = s.texts[doc_id], sources[0].texts[doc_id]
            if a != b:
                # Real releases differ in a final newline; anything else is an error.
                if a.rstrip() != b.rstrip():
                    raise CorpusError(f"{s.name}: txt/{doc_id}.txt differs from {sources[0].name}'s text")
                trailing_ws_differences += 1
    test = _split(sorted(shared), seed, test_ids)

    by_doc: dict[str, list[tuple[Span, str]]] = defaultdict(list)
    for s in sources:
        for m in s.mentions:
            if m.doc_id in shared:
                by_doc[m.doc_id].append((Span(m.start, m.end, m.label), m.source))

    raw = Counter()  # (source, split)
    within = Counter()  # label -> removed inside one category
    cross = Counter()  # label -> removed across categories
    kept_count = Counter()  # (label, split)
    kept_source = Counter()  # (source, split)
    missing = Counter()  # label -> documents without it
    n_tokens = n_splits = 0
    documents: list[Document] = []
    for doc_id in sorted(shared):
        split = "test" if doc_id in test else "train"
        text = sources[0].texts[doc_id]
        pairs = by_doc.get(doc_id, [])
        source_of: dict[Span, str] = {}
        for span, src in pairs:
            raw[(src, split)] += 1
            source_of.setdefault(span, src)
        per_label: dict[str, list[Span]] = defaultdict(list)
        for span, _ in pairs:
            per_label[span.label].append(span)
        survivors: list[Span] = []
        for label, spans in per_label.items():
            kept, removed = keep_longest(spans)
            within[label] += len(removed)
            survivors.extend(kept)
        kept, removed = keep_longest(survivors)
        for span in removed:
            cross[span.label] += 1
        for label in LABELS:
            if not per_label.get(label):
                missing[label] += 1
        for span in kept:
            kept_count[(span.label, split)] += 1
            kept_source[(source_of[span], split)] += 1
        n_tokens += len(tokenize_for_spans(text, kept))
        n_splits += boundary_splits(text, kept)
        documents.append(Document(doc_id, text, kept, split, [source_of[s] for s in kept]))

    source_names = [s.name for s in sources]
    splits = ("train", "test")
    stats: dict[str, Any] = {
        "documents": len(documents),
        "train_documents": sum(d.split == "train" for d in documents),
        "test_documents": sum(d.split == "test" for d in documents),
        "sources": source_names,
        "documents_only_in_some_sources": len(set.union(*(set(s.texts) for s in sources)) - shared),
        "documents_without": {label: missing[label] for label in LABELS},
        "mentions_raw": {src: {sp: raw[(src, sp)] for sp in splits} for src in source_names},
        "mentions_by_source": {src: {sp: kept_source[(src, sp)] for sp in splits} for src in source_names},
        "mentions": {label: {sp: kept_count[(label, sp)] for sp in splits} for label in LABELS},
        "overlaps_removed_within_category": {label: within[label] for label in LABELS},
        "overlaps_removed_across_categories": {label: cross[label] for label in LABELS},
        "tokens": n_tokens,
        "boundary_splits": n_splits,
        "texts_differing_in_trailing_whitespace": trailing_ws_differences,
        "skipped_rows": sum(len(s.skipped) for s in sources),
        "seed": seed,
        "test_ids_given": test_ids is not None,
    }
    return CorpusBuild(documents, stats, _content_hash(sources, seed, test))


def _content_hash(sources: Sequence[SourceCorpus], seed: int, test: set[str]) -> str:
    h = hashlib.sha256()
    for s in sorted(sources, key=lambda s: s.name):
        h.update(s.name.encode())
        for doc_id in sorted(s.texts):
            h.update(doc_id.encode() + b"\0" + s.texts[doc_id].encode() + b"\0")
        for m in sorted(s.mentions, key=lambda m: (m.doc_id, m.start, m.end, m.label)):
            h.update(f"{m.doc_id}\t{m.start}\t{m.end}\t{m.label}\n".encode())
    h.update(json.dumps(sorted(test)).encode())
    h.update(str(seed).encode())
    return h.hexdigest()


def build_corpus(
    release: Path,
    lang: str | None = None,
    seed: int = DEFAULT_SEED,
    test_ids: Sequence[str] | None = None,
    lenient: bool = False,
) -> CorpusBuild:
    folders = find_corpora(Path(release), lang)
    sources = [read_corpus(f, lang, lenient) for f in folders]
    return merge(sources, seed, test_ids)


def read_test_ids(path: Path) -> list[str]:
    ids = [line.strip() for line in read_utf8("test ids", Path(path)).splitlines() if line.strip()]
    if not ids:
        raise CorpusError(f"{path}: no document id in the test id file")
    return ids
