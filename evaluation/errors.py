"""Per-document errors of each cell, as JSONL records a researcher can read or load.

For each (model, prompt, document), predicted and gold character spans are compared:

- ``wrong_type``: a prediction with a gold mention's exact span but another category;
- ``wrong_boundary``: a prediction overlapping a gold mention of its category, edges differing;
- ``spurious``: a prediction that overlaps no gold mention (or only ones of other categories
  with other edges, listed under ``wrong_type`` too when the span is exact);
- ``missed``: a gold mention no prediction overlaps.

Strategy 2's spans for prompts with a structure, strategy 1's (category ``ENTITY``) for v1.
"""

from __future__ import annotations

from collections.abc import Iterator

from nerfleet.evaluation.grid import Scores
from nerfleet.evaluation.scoring import ENTITY
from nerfleet.evaluation.spans import Span


def _mention(text: str, s: Span) -> dict:
    return {"start": s.start, "end": s.end, "label": s.label, "text": text[s.start : s.end]}


def document_errors(text: str, gold: list[Span], pred: list[Span]) -> dict[str, list]:
    out: dict[str, list] = {"missed": [], "spurious": [], "wrong_boundary": [], "wrong_type": []}
    exact = {(s.start, s.end, s.label) for s in gold}
    for p in pred:
        if (p.start, p.end, p.label) in exact:
            continue
        same_span = [g for g in gold if (g.start, g.end) == (p.start, p.end)]
        same_label = [g for g in gold if g.overlaps(p) and g.label == p.label]
        if same_span:
            out["wrong_type"].append({"predicted": _mention(text, p), "gold": _mention(text, same_span[0])})
        elif same_label:
            out["wrong_boundary"].append({"predicted": _mention(text, p), "gold": _mention(text, same_label[0])})
        else:
            out["spurious"].append(_mention(text, p))
    out["missed"] = [_mention(text, g) for g in gold if not any(g.overlaps(p) for p in pred)]
    return out


def error_records(scores: Scores) -> Iterator[dict]:
    """One record per scored response (calibration rows included), in cell and document order."""
    for (model, prompt), cell in sorted(scores.cells.items()):
        for doc_id, counts in cell.predictions:
            doc = scores.docs[doc_id]
            chars = [doc.char_span(s) for s in counts.predicted]
            gold = list(doc.document.spans)
            if cell.strategy2 is None:
                gold = [Span(g.start, g.end, ENTITY) for g in gold]
                strategy = "strategy1"
            else:
                strategy = "strategy2"
            record = {"doc_id": doc.doc_id, "model": model, "prompt": prompt, "strategy": strategy}
            yield record | document_errors(doc.document.text, gold, chars)
