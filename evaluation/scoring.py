"""Both evaluation strategies of the study, the parse ratio, character-span scores, intervals.

Pure functions over plain data: the aggregation task, ``nerfleet score`` and the
tests all call :func:`score_grid`. Each cell (model × prompt) is first reduced to
per-document counts (:class:`CellCounts`); every number and its bootstrap interval is
computed from those counts (:mod:`nerfleet.evaluation.grid`).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from nervaluate import Evaluator
from seqeval.metrics.sequence_labeling import get_entities

from nerfleet.evaluation.corpus import Document
from nerfleet.evaluation.matching import MatchParams, TextIndex, matched_run, norm_token, norm_tokens
from nerfleet.evaluation.parsing import Parsed, parse
from nerfleet.evaluation.span_metrics import SPAN_MODES, span_counts
from nerfleet.evaluation.spans import LABELS, Span, Token, keep_longest, spans_to_iob, tokenize, tokenize_for_spans

ENTITY = "ENTITY"
#: Tags are always valid IOB2 here (built from non-overlapping spans), so seqeval's
#: default (conlleval) and strict IOB2 modes agree; tests check both against these numbers.
SEQEVAL_MODE = {"mode": "strict", "scheme": "IOB2"}

Entity = tuple[str, int, int]  # (label, first token, last token), seqeval's convention

#: nervaluate's SemEval-2013 schemas, and the counts each keeps (summed over documents, as its
#: ``Evaluator`` merges them): a response's are stored with its other counts.
NERVALUATE_SCHEMAS = ("strict", "exact", "partial", "ent_type")
NERVALUATE_COUNTS = ("correct", "incorrect", "partial", "missed", "spurious")


@dataclass
class PreparedDoc:
    """Everything about a gold document that scoring reuses across responses.

    Two tokenisations: ``tokens`` are cut at the gold span edges (so gold and predictions
    are tags over one sequence); ``plain`` is the text's own words, which predictions are
    searched in, so where a prediction is found never depends on where the gold spans are.
    """

    document: Document
    tokens: list[Token]
    plain: list[Token]
    gold: list[str]
    gold_entity: list[str]
    gold_entities: frozenset[Entity]
    gold_entity_entities: frozenset[Entity]
    _indexes: dict = field(default_factory=dict, repr=False)

    @property
    def doc_id(self) -> str:
        return self.document.doc_id

    def _index(self, which: str, strip_accents: bool) -> TextIndex:
        key = (which, strip_accents)
        if key not in self._indexes:
            toks = self.tokens if which == "gold" else self.plain
            self._indexes[key] = TextIndex([norm_token(t.text, strip_accents) for t in toks])
        return self._indexes[key]

    def gold_index(self, strip_accents: bool = False) -> TextIndex:
        return self._index("gold", strip_accents)

    def text_index(self, strip_accents: bool = False) -> TextIndex:
        return self._index("plain", strip_accents)

    def terms(self, strip_accents: bool = False) -> list[tuple[str, ...]]:
        """Each distinct gold term, as the gold-cut tokens see it."""
        key = ("terms", strip_accents)
        if key not in self._indexes:
            index = self.gold_index(strip_accents)
            starts = [t.start for t in self.tokens]
            terms: dict[tuple[str, ...], None] = {}
            for span in self.document.spans:
                i = bisect.bisect_left(starts, span.start)
                j = i
                while j < len(self.tokens) and self.tokens[j].end <= span.end:
                    j += 1
                if j > i:
                    terms[tuple(index.tokens[i:j])] = None
            self._indexes[key] = list(terms)
        return self._indexes[key]

    def to_scoring_tokens(self, i: int, j: int) -> tuple[int, int]:
        """Plain-token range [i, j) → the same characters as a range of ``tokens``."""
        key = ("bounds",)
        if key not in self._indexes:
            self._indexes[key] = ([t.start for t in self.tokens], [t.end for t in self.tokens])
        starts, ends = self._indexes[key]
        return bisect.bisect_left(starts, self.plain[i].start), bisect.bisect_left(ends, self.plain[j - 1].end) + 1

    def char_span(self, s: Span) -> Span:
        return Span(self.tokens[s.start].start, self.tokens[s.end - 1].end, s.label)


def prepare(doc: Document) -> PreparedDoc:
    tokens = tokenize_for_spans(doc.text, doc.spans)
    gold = spans_to_iob(tokens, doc.spans)
    gold_entity = [t if t == "O" else t[:2] + ENTITY for t in gold]
    return PreparedDoc(
        doc,
        tokens,
        tokenize(doc.text),
        gold,
        gold_entity,
        frozenset(get_entities(gold)),
        frozenset(get_entities(gold_entity)),
    )


def tags_from_spans(n: int, spans: Sequence[Span]) -> list[str]:
    """IOB2 tags over token-index spans (already non-overlapping)."""
    tags = ["O"] * n
    for s in spans:
        tags[s.start] = "B-" + s.label
        for k in range(s.start + 1, s.end):
            tags[k] = "I-" + s.label
    return tags


def entities_of(spans: Sequence[Span]) -> frozenset[Entity]:
    """The entities seqeval's ``get_entities`` reads from ``tags_from_spans`` (tested)."""
    return frozenset((s.label, s.start, s.end - 1) for s in spans)


def strategy1_spans(doc: PreparedDoc, output: str, params: MatchParams) -> list[Span]:
    """Gold terms the output mentions (complete or partial), at every occurrence; longest wins."""
    out = TextIndex(norm_tokens(output, params.strip_accents))
    index = doc.gold_index(params.strip_accents)
    spans = {
        Span(i, j, ENTITY)
        for term in doc.terms(params.strip_accents)
        if matched_run(term, out, params) is not None
        for i, j in index.occurrences(term)
    }
    return keep_longest(spans)[0]


def strategy2_spans(doc: PreparedDoc, parsed: Parsed, params: MatchParams) -> list[Span]:
    """Parsed entities found in the document's own words, at every occurrence, by category; longest wins."""
    index = doc.text_index(params.strip_accents)
    spans = set()
    for text, category in parsed.entities:
        term = norm_tokens(text, params.strip_accents)
        run = matched_run(term, index, params)
        if run is not None:
            for i, j in index.occurrences(term[run[0] : run[1]]):
                spans.add(Span(*doc.to_scoring_tokens(i, j), category))
    return keep_longest(spans)[0]


def strategy1_tags(doc: PreparedDoc, output: str, params: MatchParams) -> list[str]:
    return tags_from_spans(len(doc.tokens), strategy1_spans(doc, output, params))


def strategy2_tags(doc: PreparedDoc, parsed: Parsed, params: MatchParams) -> list[str]:
    return tags_from_spans(len(doc.tokens), strategy2_spans(doc, parsed, params))


def nervaluate_counts(gold: list[str], pred: list[str]) -> np.ndarray:
    """(schemas × counts) of one document, as nervaluate's ``Evaluator`` counts it."""
    overall = Evaluator([gold], [pred], tags=list(LABELS), loader="list").evaluate()["overall"]
    return np.array([[getattr(overall[s], c) for c in NERVALUATE_COUNTS] for s in NERVALUATE_SCHEMAS], dtype=np.int64)


def entity_counts(gold: frozenset[Entity], pred: frozenset[Entity], labels: Sequence[str]) -> np.ndarray:
    """(labels × 3) of (tp, predicted, gold), seqeval's counting: label, start and end all match."""
    out = np.zeros((len(labels), 3), dtype=np.int64)
    row = {label: k for k, label in enumerate(labels)}
    for label, *_ in gold:
        if label in row:
            out[row[label], 2] += 1
    for ent in pred:
        if ent[0] in row:
            out[row[ent[0]], 1] += 1
            if ent in gold:
                out[row[ent[0]], 0] += 1
    return out


@dataclass(frozen=True)
class Response:
    doc_id: str
    model: str
    prompt: str
    output: str | None  # None: the job failed, no answer exists
    error: str | None = None
    job: str | None = None  # the job's hash, where the answer came from a run (its counts are stored by it)


@dataclass
class CellCounts:
    """One cell's per-document counts: every score of the cell is a function of their sums."""

    doc_ids: list[str]
    strategy1: np.ndarray  # (docs × 3): tp, predicted, gold of category-agnostic entities
    strategy2: np.ndarray | None = None  # (docs × labels × 3)
    spans: np.ndarray | None = None  # (docs × modes × labels × 3): character spans, strict / overlap
    parsed: np.ndarray | None = None  # (docs × 2): lenient, strict (0 or 1)
    dropped: int = 0
    nervaluate: np.ndarray | None = None  # (schemas × counts), summed over the cell's documents
    #: Per response, kept for the error export: (document id, its counts, whose ``predicted`` are
    #: spans over the document's ``tokens``).
    predictions: list[tuple[str, ResponseCounts]] = field(default_factory=list)


@dataclass(frozen=True)
class ResponseCounts:
    """What one scored response adds to its cell: a row of each of :class:`CellCounts`' arrays and
    the token spans it predicts. Plain data, so a calibration row's counts are stored once per
    document and a run's answers as they are stored (:mod:`nerfleet.storage.counts`), instead of
    matched again at each aggregation."""

    strategy1: np.ndarray  # (3,)
    #: The token spans it predicts: :class:`Span` s, or [start, end, label] as stored (read as
    #: spans only when asked for: the aggregation never does, and thousands cost a tenth of a second).
    predicted_spans: Sequence[Span] | Sequence[list]
    strategy2: np.ndarray | None = None  # (labels × 3)
    spans: np.ndarray | None = None  # (modes × labels × 3)
    parsed: tuple[int, int] | None = None  # lenient, strict
    dropped: int = 0
    nervaluate: np.ndarray | None = None  # (schemas × counts)

    @functools.cached_property
    def predicted(self) -> tuple[Span, ...]:
        return tuple(s if isinstance(s, Span) else Span(*s) for s in self.predicted_spans)

    def to_json(self) -> dict:
        arrays = {k: v.tolist() for k in _ARRAYS if (v := getattr(self, k)) is not None}
        predicted = [[s.start, s.end, s.label] for s in self.predicted]
        return {**arrays, "predicted": predicted, "parsed": self.parsed, "dropped": self.dropped}

    @classmethod
    def from_json(cls, d: dict) -> ResponseCounts:
        array = lambda k: np.asarray(d[k], dtype=np.int64) if d.get(k) is not None else None  # noqa: E731
        parsed = tuple(d["parsed"]) if d.get("parsed") is not None else None
        return cls(
            array("strategy1"),
            d["predicted"],
            array("strategy2"),
            array("spans"),
            parsed,
            d.get("dropped", 0),
            array("nervaluate"),
        )


_ARRAYS = ("strategy1", "strategy2", "spans", "nervaluate")


def count_response(doc: PreparedDoc, output: str, fmt: str, params: MatchParams, memo: dict) -> ResponseCounts:
    """One response's counts. ``memo`` keeps strategy-1 spans by (document, output) across the cells
    of a grid: the same answer to several prompts (an echo) is matched once."""
    key = (doc.doc_id, output)
    if key not in memo:
        memo[key] = strategy1_spans(doc, output, params)
    spans1 = memo[key]
    s1 = entity_counts(doc.gold_entity_entities, entities_of(spans1), [ENTITY])[0]
    if fmt == "none":
        return ResponseCounts(s1, tuple(spans1))
    p = parse(output, fmt)
    spans = strategy2_spans(doc, p, params)
    chars = [doc.char_span(s) for s in spans]
    by_span = np.zeros((len(SPAN_MODES), len(LABELS), 3), dtype=np.int64)
    for li, label in enumerate(LABELS):
        per_mode = span_counts(doc.document.spans, chars, label)
        for mi, mode in enumerate(SPAN_MODES):
            by_span[mi, li] = per_mode[mode]
    s2 = entity_counts(doc.gold_entities, entities_of(spans), LABELS)
    nerv = nervaluate_counts(doc.gold, tags_from_spans(len(doc.tokens), spans))
    return ResponseCounts(s1, tuple(spans), s2, by_span, (int(p.lenient), int(p.strict)), p.dropped, nerv)


#: Counts already known, by (model, format, document id): the stored calibration rows.
Known = dict[tuple[str, str, str], ResponseCounts]
#: Counts already known, by (model, prompt, document id): responses scored as they were stored.
Counted = dict[tuple[str, str, str], ResponseCounts]


def count_cell(
    rs: Sequence[Response],
    docs: Mapping[str, PreparedDoc],
    fmt: str,
    params: MatchParams,
    memo: dict | None = None,
    known: Callable[[Response], ResponseCounts | None] | None = None,
) -> CellCounts:
    """Reduce one cell's scored responses (``output`` not None) to per-document counts, in doc-id
    order; a response whose counts are ``known`` is not matched again (nor its document prepared)."""
    rs = sorted(rs, key=lambda r: r.doc_id)
    memo = {} if memo is None else memo
    rows = [
        (known(r) if known else None) or count_response(docs[r.doc_id], r.output or "", fmt, params, memo) for r in rs
    ]
    cell = CellCounts([r.doc_id for r in rs], np.zeros((len(rs), 3), dtype=np.int64))
    for k, (r, row) in enumerate(zip(rs, rows)):
        cell.strategy1[k] = row.strategy1
        cell.predictions.append((r.doc_id, row))
    if fmt == "none":
        return cell
    cell.strategy2 = np.stack([row.strategy2 for row in rows]) if rows else np.zeros((0, len(LABELS), 3), np.int64)
    cell.spans = (
        np.stack([row.spans for row in rows]) if rows else np.zeros((0, len(SPAN_MODES), len(LABELS), 3), np.int64)
    )
    cell.parsed = np.array([row.parsed for row in rows], dtype=np.int64).reshape(len(rows), 2)
    cell.dropped = sum(row.dropped for row in rows)
    nerv = [row.nervaluate for row in rows]
    if all(n is not None for n in nerv):  # calibration rows stored before they were counted have none
        cell.nervaluate = sum(nerv, np.zeros((len(NERVALUATE_SCHEMAS), len(NERVALUATE_COUNTS)), np.int64))
    return cell
