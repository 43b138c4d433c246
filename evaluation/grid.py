"""Scores a grid of responses: every (model, prompt) cell, with intervals and calibration rows.

Strategy 1 (detection, category-agnostic), strategy 2 (the structured answer, by category),
Table 5's parse ratio, the BSC character-span scores and nervaluate's four schemas, each P/R/F
and ratio with its document-level bootstrap 95% interval (:mod:`nerfleet.evaluation.intervals`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nervaluate.entities import EvaluationResult

from nerfleet.evaluation.calibration import CALIBRATION_MODELS, ECHO, ORACLE, echo_output, oracle_output
from nerfleet.evaluation.intervals import RESAMPLES, SEED, bounds, paired_p_value, prf, resampled_sums
from nerfleet.evaluation.matching import MatchParams
from nerfleet.evaluation.scoring import (
    NERVALUATE_COUNTS,
    NERVALUATE_SCHEMAS,
    SEQEVAL_MODE,
    CellCounts,
    Counted,
    Known,
    PreparedDoc,
    Response,
    ResponseCounts,
    count_cell,
    count_response,
    entity_counts,
)
from nerfleet.evaluation.span_metrics import SPAN_MODES
from nerfleet.evaluation.spans import LABELS

_PRF = ("precision", "recall", "f1")


def _cell(point: np.ndarray, ci: np.ndarray | None, **extra: Any) -> dict:
    out: dict[str, Any] = {k: float(point[i]) for i, k in enumerate(_PRF)}
    out.update(extra)
    out["ci"] = {k: [float(ci[0, i]), float(ci[1, i])] for i, k in enumerate(_PRF)} if ci is not None else None
    return out


def _boot(per_doc: np.ndarray) -> np.ndarray | None:
    return resampled_sums(per_doc) if per_doc.shape[0] else None


def prf_block(per_doc: np.ndarray, labels: Sequence[str]) -> dict[str, dict]:
    """Per label, micro and macro P/R/F1 with intervals from (docs × labels × 3) counts."""
    sums = per_doc.sum(axis=0)
    boot = _boot(per_doc)
    point = prf(sums)
    out = {
        label: _cell(point[k], bounds(prf(boot[:, k])) if boot is not None else None, support=int(sums[k, 2]))
        for k, label in enumerate(labels)
    }
    out["micro"] = _cell(
        prf(sums.sum(axis=0)),
        bounds(prf(boot.sum(axis=1))) if boot is not None else None,
        support=int(sums[:, 2].sum()),
    )
    out["macro"] = _cell(
        point.mean(axis=0), bounds(prf(boot).mean(axis=1)) if boot is not None else None, support=int(sums[:, 2].sum())
    )
    return out


def summarise(cell: CellCounts) -> dict[str, Any]:
    """Every score of one cell (the JSON a report reads)."""
    n = len(cell.doc_ids)
    boot1 = _boot(cell.strategy1)
    out: dict[str, Any] = {
        "strategy1": _cell(prf(cell.strategy1.sum(axis=0)), bounds(prf(boot1)) if boot1 is not None else None, n=n)
    }
    if cell.strategy2 is None:
        return out
    out["strategy2"] = prf_block(cell.strategy2, LABELS)
    out["spans"] = {mode: prf_block(cell.spans[:, m], LABELS) for m, mode in enumerate(SPAN_MODES)}
    ratio = cell.parsed.mean(axis=0) if n else np.zeros(2)
    ci = bounds(_boot(cell.parsed) / n) if n else None
    out["parse_ratio"] = {
        "lenient": float(ratio[0]),
        "strict": float(ratio[1]),
        "dropped_items": cell.dropped,
        "n": n,
        "ci": {k: [float(ci[0, i]), float(ci[1, i])] for i, k in enumerate(("lenient", "strict"))}
        if ci is not None
        else None,
    }
    return out


def nervaluate_scores(counts: np.ndarray) -> dict[str, dict]:
    """The four SemEval-2013 schemas from a cell's summed (schemas × counts): how much of a miss is
    only a boundary disagreement. nervaluate's own formulas (half credit for partial matches in the
    partial and type schemas), over the counts its ``Evaluator`` would have merged document by document."""
    out = {}
    for k, schema in enumerate(NERVALUATE_SCHEMAS):
        result = EvaluationResult(**{c: int(counts[k, j]) for j, c in enumerate(NERVALUATE_COUNTS)})
        result.compute_metrics(partial_or_type=schema in ("partial", "ent_type"))
        out[schema] = {"precision": result.precision, "recall": result.recall, "f1": result.f1}
    return out


@dataclass
class Scores:
    strategy1: dict = field(default_factory=dict)
    strategy2: dict = field(default_factory=dict)
    spans: dict = field(default_factory=dict)
    parse_ratio: dict = field(default_factory=dict)
    nervaluate: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    documents: int = 0
    params: dict = field(default_factory=dict)
    calibration: list = field(default_factory=list)
    #: The cells' per-document counts (not in the JSON): for comparisons and the error export.
    cells: dict = field(default_factory=dict, repr=False)
    #: The prepared documents the cells' predictions are spans of (the error export reads them).
    docs: Mapping[str, PreparedDoc] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        keys = ("strategy1", "strategy2", "spans", "parse_ratio", "nervaluate", "counts", "failed")
        return {k: getattr(self, k) for k in keys} | {
            "documents": self.documents,
            "params": self.params,
            "calibration": self.calibration,
        }


def calibration_responses(
    responses: Sequence[Response], docs: Mapping[str, PreparedDoc], formats: dict[str, str], known: Known
):
    """Echo and oracle answers for every document and prompt of the grid; an answer whose counts
    are ``known`` is left empty (it is not matched again, and its document need not be prepared)."""
    by_prompt: dict[str, set[str]] = defaultdict(set)
    for r in responses:
        by_prompt[r.prompt].add(r.doc_id)
    for prompt, doc_ids in sorted(by_prompt.items()):
        fmt = formats.get(prompt, "none")
        for doc_id in sorted(doc_ids):
            for model, output in ((ECHO, echo_output), (ORACLE, oracle_output)):
                answer = "" if (model, fmt, doc_id) in known else output(docs[doc_id].document, fmt)
                yield Response(doc_id, model, prompt, answer)


def calibration_counts(docs: Mapping[str, PreparedDoc], fmts: Iterable[str], params: MatchParams) -> Known:
    """The echo and oracle rows' counts for these documents in each format: what a grid's
    calibration rows hold, computed once and stored by the caller."""
    memo: dict = {}
    return {
        (model, fmt, doc_id): count_response(d, output(d.document, fmt), fmt, params, memo)
        for fmt in sorted(set(fmts))
        for doc_id, d in sorted(docs.items())
        for model, output in ((ECHO, echo_output), (ORACLE, oracle_output))
    }


def count_grid(
    responses: Iterable[Response],
    docs: Mapping[str, PreparedDoc],
    formats: dict[str, str],
    params: MatchParams,
    known: Known | None = None,
    counted: Counted | None = None,
) -> tuple[dict[tuple[str, str], CellCounts], dict[tuple[str, str], list[str]]]:
    """Each cell's counts, and each cell's failed documents (no answer: never scored as empty).
    Counts in ``counted`` (responses) or ``known`` (calibration rows) are not computed again."""
    cells: dict[tuple[str, str], list[Response]] = defaultdict(list)
    for r in responses:
        cells[(r.model, r.prompt)].append(r)
    known, counted = known or {}, counted or {}
    out, failed, memo = {}, {}, {}
    for key, rs in sorted(cells.items()):
        fmt = formats.get(key[1], "none")
        failed[key] = sorted(r.doc_id for r in rs if r.output is None)
        answered = [r for r in rs if r.output is not None]

        def lookup(r: Response, fmt: str = fmt) -> ResponseCounts | None:
            return counted.get((r.model, r.prompt, r.doc_id)) or known.get((r.model, fmt, r.doc_id))

        out[key] = count_cell(answered, docs, fmt, params, memo, lookup)
    return out, failed


def score_grid(
    responses: Iterable[Response],
    docs: Mapping[str, PreparedDoc],
    formats: dict[str, str],
    params: MatchParams = MatchParams(),
    with_nervaluate: bool = True,
    calibration: bool = True,
    known: Known | None = None,
    counted: Counted | None = None,
) -> Scores:
    """Score every (model, prompt) cell of a set of responses.

    ``formats`` maps a prompt name to the structure it asked for (none/dict/json);
    strategy 2, span scores and the parse ratio exist only for dict/json prompts.
    ``calibration`` adds the ``echo`` and ``oracle`` rows over the same documents. Counts already
    known are not computed again: the calibration rows' in ``known`` (:func:`calibration_counts`,
    stored once per note), the responses' in ``counted`` (scored as they were stored); ``docs``
    then needs only the documents of what is left to count.
    """
    responses = list(responses)
    known = known or {}
    clash = sorted({r.model for r in responses} & set(CALIBRATION_MODELS))
    if calibration and clash:
        raise ValueError(f"model name {clash[0]!r} is reserved for a calibration row")
    if calibration:
        responses += list(calibration_responses(responses, docs, formats, known))
    scores = Scores(
        params={
            "match": params.as_dict(),
            "seqeval": SEQEVAL_MODE,
            "bootstrap": {"resamples": RESAMPLES, "seed": SEED},
        },
        calibration=list(CALIBRATION_MODELS) if calibration else [],
        docs=docs,
    )
    cells, failed = count_grid(responses, docs, formats, params, known, counted)
    scores.cells = cells
    for (model, prompt), cell in cells.items():
        if failed[(model, prompt)]:
            scores.failed.setdefault(model, {})[prompt] = failed[(model, prompt)]
        scores.counts.setdefault(model, {})[prompt] = {
            "scored": len(cell.doc_ids),
            "failed": len(failed[(model, prompt)]),
        }
        summary = summarise(cell)
        for block in ("strategy1", "strategy2", "spans", "parse_ratio"):
            if block in summary:
                getattr(scores, block).setdefault(model, {})[prompt] = summary[block]
        # the calibration rows are references for P/R/F, not rows of nervaluate's tables
        if with_nervaluate and cell.nervaluate is not None and model not in CALIBRATION_MODELS:
            scores.nervaluate.setdefault(model, {})[prompt] = nervaluate_scores(cell.nervaluate)
    scores.documents = len({r.doc_id for r in responses})
    return scores


def _restrict(per_doc: np.ndarray, doc_ids: list[str], keep: list[str]) -> np.ndarray:
    row = {d: k for k, d in enumerate(doc_ids)}
    return per_doc[[row[d] for d in keep]]


def compare_cells(scores: Scores, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any]:
    """Paired bootstrap between two cells (model, prompt) over the documents both answered."""
    for key in (a, b):
        if key not in scores.cells:
            known = ", ".join(f"{m}:{p}" for m, p in sorted(scores.cells))
            raise LookupError(f"no cell {key[0]}:{key[1]} (known: {known})")
    ca, cb = scores.cells[a], scores.cells[b]
    common = sorted(set(ca.doc_ids) & set(cb.doc_ids))
    if not common:
        raise ValueError(f"cells {a[0]}:{a[1]} and {b[0]}:{b[1]} share no document")
    metrics = {"strategy1 F1": lambda c: _restrict(c.strategy1, c.doc_ids, common)[:, None]}
    if ca.strategy2 is not None and cb.strategy2 is not None:
        metrics["strategy2 micro F1"] = lambda c: _restrict(c.strategy2, c.doc_ids, common)
        metrics["spans strict micro F1"] = lambda c: _restrict(c.spans[:, 0], c.doc_ids, common)
    out: dict[str, Any] = {"a": f"{a[0]}:{a[1]}", "b": f"{b[0]}:{b[1]}", "documents": len(common), "metrics": {}}
    for name, counts_of in metrics.items():
        values = []
        for c in (ca, cb):
            per_doc = counts_of(c)
            observed = prf(per_doc.sum(axis=0).sum(axis=0))[2]
            values.append(np.concatenate([[observed], prf(resampled_sums(per_doc).sum(axis=1))[:, 2]]))
        out["metrics"][name] = {
            "a": float(values[0][0]),
            "b": float(values[1][0]),
            "difference": float(values[0][0] - values[1][0]),
            "p_value": paired_p_value(values[0], values[1]),
        }
    return out


def entity_scores(gold: Sequence[frozenset], pred: Sequence[frozenset], labels: Sequence[str]) -> dict[str, dict]:
    """seqeval's per-label, micro and macro P/R/F1 over entity sets (one per document), with intervals."""
    per_doc = (
        np.stack([entity_counts(g, p, labels) for g, p in zip(gold, pred)]) if gold else np.zeros((0, len(labels), 3))
    )
    return prf_block(per_doc, labels)
