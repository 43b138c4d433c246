"""Both evaluation strategies of the study, the parse ratio, and nervaluate schemas.

Pure functions over plain data: the aggregation task, ``nerfleet score`` and the
tests all call :func:`score_grid`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nervaluate import Evaluator
from seqeval.metrics.sequence_labeling import get_entities

from nerfleet.evaluation.corpus import Document
from nerfleet.evaluation.matching import MatchParams, TextIndex, doc_index, matched_run, norm_tokens
from nerfleet.evaluation.parsing import Parsed, parse
from nerfleet.evaluation.spans import LABELS, Span, Token, keep_longest, spans_to_iob, tokenize_for_spans

ENTITY = "ENTITY"
#: Tags are always valid IOB2 here (built from non-overlapping spans), so seqeval's
#: default (conlleval) and strict IOB2 modes agree; tests check both against these numbers.
SEQEVAL_MODE = {"mode": "strict", "scheme": "IOB2"}

Entity = tuple[str, int, int]  # (label, first token, last token), seqeval's convention
NERVALUATE_SCHEMAS = ("strict", "exact", "partial", "ent_type")


@dataclass
class PreparedDoc:
    """Everything about a gold document that scoring reuses across responses."""

    doc_id: str
    tokens: list[Token]
    gold: list[str]
    gold_entity: list[str]
    index: TextIndex
    terms: list[tuple[str, ...]]
    gold_entities: frozenset[Entity]
    gold_entity_entities: frozenset[Entity]


def prepare(doc: Document) -> PreparedDoc:
    tokens = tokenize_for_spans(doc.text, doc.spans)
    gold = spans_to_iob(tokens, doc.spans)
    gold_entity = [t if t == "O" else t[:2] + ENTITY for t in gold]
    index = doc_index(tokens)
    terms: dict[tuple[str, ...], None] = {}
    # Token ranges of each gold span, to take the term exactly as the index sees it.
    ti = 0
    for span in doc.spans:
        while ti < len(tokens) and tokens[ti].start < span.start:
            ti += 1
        tj = ti
        while tj < len(tokens) and tokens[tj].end <= span.end:
            tj += 1
        term = tuple(index.tokens[ti:tj])
        if term:
            terms[term] = None
    return PreparedDoc(
        doc.doc_id,
        tokens,
        gold,
        gold_entity,
        index,
        list(terms),
        frozenset(get_entities(gold)),
        frozenset(get_entities(gold_entity)),
    )


def tags_from_spans(n: int, spans: Iterable[Span]) -> list[str]:
    """IOB2 tags over token-index spans (already non-overlapping)."""
    tags = ["O"] * n
    for s in spans:
        tags[s.start] = "B-" + s.label
        for k in range(s.start + 1, s.end):
            tags[k] = "I-" + s.label
    return tags


def entities_of(spans: Iterable[Span]) -> frozenset[Entity]:
    """The entities seqeval's ``get_entities`` reads from ``tags_from_spans`` (tested)."""
    return frozenset((s.label, s.start, s.end - 1) for s in spans)


def strategy1_spans(doc: PreparedDoc, output: str, params: MatchParams) -> list[Span]:
    """Gold terms the output mentions (complete or partial), at every occurrence; longest wins."""
    out = TextIndex(norm_tokens(output))
    spans = {
        Span(i, j, ENTITY)
        for term in doc.terms
        if matched_run(term, out, params) is not None
        for i, j in doc.index.occurrences(term)
    }
    return keep_longest(spans)[0]


def strategy2_spans(doc: PreparedDoc, parsed: Parsed, params: MatchParams) -> list[Span]:
    """Parsed entities found in the document, at every occurrence, by category; longest wins."""
    spans = set()
    for text, category in parsed.entities:
        term = norm_tokens(text)
        run = matched_run(term, doc.index, params)
        if run is not None:
            spans.update(Span(i, j, category) for i, j in doc.index.occurrences(term[run[0] : run[1]]))
    return keep_longest(spans)[0]


def strategy1_tags(doc: PreparedDoc, output: str, params: MatchParams) -> list[str]:
    return tags_from_spans(len(doc.tokens), strategy1_spans(doc, output, params))


def strategy2_tags(doc: PreparedDoc, parsed: Parsed, params: MatchParams) -> list[str]:
    return tags_from_spans(len(doc.tokens), strategy2_spans(doc, parsed, params))


def _prf(tp: int, n_pred: int, n_gold: int) -> dict[str, float | int]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "support": n_gold}


def prf(gold: Sequence[frozenset[Entity]], pred: Sequence[frozenset[Entity]], labels: Sequence[str]) -> dict[str, dict]:
    """Per-label and micro precision/recall/F1 over seqeval entity sets, one set per document.

    Same counting as seqeval's ``classification_report`` (an entity is correct when
    label, start and end all match), zero where undefined.
    """
    tp: dict[str, int] = defaultdict(int)
    n_pred: dict[str, int] = defaultdict(int)
    n_gold: dict[str, int] = defaultdict(int)
    for g, p in zip(gold, pred):
        for label, *_ in g:
            n_gold[label] += 1
        for ent in p:
            n_pred[ent[0]] += 1
            if ent in g:
                tp[ent[0]] += 1
    out = {label: _prf(tp[label], n_pred[label], n_gold[label]) for label in labels}
    out["micro"] = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    return out


@dataclass(frozen=True)
class Response:
    doc_id: str
    model: str
    prompt: str
    output: str | None  # None: the job failed, no answer exists
    error: str | None = None


@dataclass
class Scores:
    strategy1: dict = field(default_factory=dict)
    strategy2: dict = field(default_factory=dict)
    parse_ratio: dict = field(default_factory=dict)
    nervaluate: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    documents: int = 0
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy1": self.strategy1,
            "strategy2": self.strategy2,
            "parse_ratio": self.parse_ratio,
            "nervaluate": self.nervaluate,
            "counts": self.counts,
            "failed": self.failed,
            "documents": self.documents,
            "params": self.params,
        }


def score_grid(
    responses: Iterable[Response],
    docs: dict[str, PreparedDoc],
    formats: dict[str, str],
    params: MatchParams = MatchParams(),
    with_nervaluate: bool = True,
) -> Scores:
    """Score every (model, prompt) cell of a set of responses.

    ``formats`` maps a prompt name to the structure it asked for (none/dict/json);
    strategy 2 and the parse ratio exist only for dict/json prompts. Failed jobs
    (``output is None``) are listed, never scored as empty answers.
    """
    cells: dict[tuple[str, str], list[Response]] = defaultdict(list)
    for r in responses:
        cells[(r.model, r.prompt)].append(r)
    scores = Scores(params={"match": params.as_dict(), "seqeval": SEQEVAL_MODE})
    seen_docs: set[str] = set()
    for (model, prompt), rs in sorted(cells.items()):
        failed = sorted(r.doc_id for r in rs if r.output is None)
        ok = [r for r in rs if r.output is not None]
        seen_docs.update(r.doc_id for r in rs)
        if failed:
            scores.failed.setdefault(model, {})[prompt] = failed
        scores.counts.setdefault(model, {})[prompt] = {"scored": len(ok), "failed": len(failed)}
        gold1 = [docs[r.doc_id].gold_entity_entities for r in ok]
        pred1 = [entities_of(strategy1_spans(docs[r.doc_id], r.output or "", params)) for r in ok]
        s1 = prf(gold1, pred1, [ENTITY])["micro"]
        scores.strategy1.setdefault(model, {})[prompt] = {k: s1[k] for k in ("precision", "recall", "f1")}
        fmt = formats.get(prompt, "none")
        if fmt == "none":
            continue
        parsed = [parse(r.output or "", fmt) for r in ok]
        spans2 = [strategy2_spans(docs[r.doc_id], p, params) for r, p in zip(ok, parsed)]
        gold2 = [docs[r.doc_id].gold_entities for r in ok]
        scores.strategy2.setdefault(model, {})[prompt] = prf(gold2, [entities_of(s) for s in spans2], LABELS)
        n = len(ok) or 1
        scores.parse_ratio.setdefault(model, {})[prompt] = {
            "lenient": sum(p.lenient for p in parsed) / n,
            "strict": sum(p.strict for p in parsed) / n,
            "dropped_items": sum(p.dropped for p in parsed),
        }
        if with_nervaluate:
            pred_tags = [tags_from_spans(len(docs[r.doc_id].tokens), s) for r, s in zip(ok, spans2)]
            gold_tags = [docs[r.doc_id].gold for r in ok]
            scores.nervaluate.setdefault(model, {})[prompt] = nervaluate_scores(gold_tags, pred_tags)
    scores.documents = len(seen_docs)
    return scores


def nervaluate_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, dict]:
    """The four SemEval-2013 schemas: how much of a miss is only a boundary disagreement."""
    if not gold:
        return {s: {"precision": 0.0, "recall": 0.0, "f1": 0.0} for s in NERVALUATE_SCHEMAS}
    overall = Evaluator(list(gold), list(pred), tags=list(LABELS), loader="list").evaluate()["overall"]
    return {
        s: {"precision": overall[s].precision, "recall": overall[s].recall, "f1": overall[s].f1}
        for s in NERVALUATE_SCHEMAS
    }
