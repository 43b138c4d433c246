"""Character-span scores as the BSC shared tasks (DisTEMIST, SympTEMIST, MedProcNER) define them.

Reimplemented from their published evaluation libraries' definitions, per document:

- **strict**: a prediction is a true positive when a gold mention has the same label,
  start and end (one to one);
- **overlap**: one to one as well, each gold mention (in document order) taking the first
  unmatched prediction of the same label whose closed interval ``[start, end]`` meets its
  own (so spans that only touch count, as in the libraries' ``is_overlap``).

False positives are the predictions left, false negatives the gold mentions left; micro
sums the counts over documents (and categories), macro averages the categories' P, R, F1.
"""

from __future__ import annotations

from collections.abc import Sequence

from nerfleet.evaluation.spans import Span

SPAN_MODES = ("strict", "overlap")


def _touches(a: Span, b: Span) -> bool:
    return b.start <= a.start <= b.end or a.start <= b.start <= a.end


def span_counts(gold: Sequence[Span], pred: Sequence[Span], label: str) -> dict[str, tuple[int, int, int]]:
    """(tp, n_pred, n_gold) of one document and label, for each mode."""
    g = sorted((s for s in gold if s.label == label), key=lambda s: (s.start, s.end))
    p = sorted((s for s in pred if s.label == label), key=lambda s: (s.start, s.end))
    strict = len({(s.start, s.end) for s in g} & {(s.start, s.end) for s in p})
    left = list(p)
    overlap = 0
    for gs in g:
        for k, ps in enumerate(left):
            if _touches(gs, ps):
                overlap += 1
                del left[k]
                break
    return {"strict": (strict, len(p), len(g)), "overlap": (overlap, len(p), len(g))}


def prf_counts(tp: float, n_pred: float, n_gold: float) -> dict[str, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p and r else 0.0}
