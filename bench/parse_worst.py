"""Worst scoring time of one output, over the adversarial set (issue 20): each must stay under 0.2 s on one core.

For each degenerate answer (tests/adversarial.py: whitespace floods, 1,100-deep nesting, 100 KB of
braces, one item of 3,000 words, the note itself, …) it times what the aggregation does with one
output under v1, v2 and v3: parsing, strategy 1 and strategy 2 matching against a real note.
Prints a table and writes JSON with the machine and versions.

    python bench/parse_worst.py [--corpus ../shared/data/clinical-cases-es] [--json bench/results/….json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.adversarial

from nerfleet.evaluation.corpus import build_corpus  # noqa: E402
from nerfleet.evaluation.matching import MatchParams, matched_run, norm_tokens  # noqa: E402
from nerfleet.evaluation.parsing import parse  # noqa: E402
from nerfleet.evaluation.scoring import prepare, strategy1_spans, strategy2_spans  # noqa: E402
from tests.adversarial import adversarial_outputs  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinical-cases-es"
LIMIT_S = 0.2


def time_one(doc, output: str, fmt: str, params: MatchParams, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        strategy1_spans(doc, output, params)
        parsed = parse(output, fmt)
        if parsed is not None:
            strategy2_spans(doc, parsed, params)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=DEFAULT)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    docs = sorted(build_corpus(args.corpus).documents, key=lambda d: -len(d.text))
    note = docs[0]  # the longest note: the most gold terms to look for
    doc = prepare(note)
    rows = []
    print(f"note {note.doc_id}: {len(note.text)} characters, {len(note.spans)} gold mentions")
    print(f"{'output':<28}{'chars':>9}{'v1 s':>9}{'v2 s':>9}{'v3 s':>9}")
    for name, output in adversarial_outputs(note.text).items():
        formats = (("v1", "none"), ("v2", "dict"), ("v3", "json"))
        times = {p: time_one(doc, output, f, MatchParams()) for p, f in formats}
        times["v2 exact"] = time_one(doc, output, "dict", MatchParams("exact"))
        rows.append({"output": name, "chars": len(output), **times})
        print(f"{name:<28}{len(output):>9}{times['v1']:>9.3f}{times['v2']:>9.3f}{times['v3']:>9.3f}")
    # An item over MAX_ITEM_CHARS is not an entity and never reaches matching; time matching such a term anyway.
    term = norm_tokens(adversarial_outputs(note.text)["one item of 3,000 words"])
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        matched_run(term, doc.text_index(), MatchParams())
        best = min(best, time.perf_counter() - t)
    rows.append({"output": "matching a 3,000-word term", "chars": 0, "v1": 0.0, "v2": best, "v3": 0.0, "v2 exact": 0.0})
    print(f"{'matching a 3,000-word term':<28}{len(term):>9}{'':>9}{best:>9.3f}")
    worst = max(max(r[k] for k in ("v1", "v2", "v3", "v2 exact")) for r in rows)
    print(f"worst: {worst:.3f} s per output (limit {LIMIT_S} s): {'ok' if worst < LIMIT_S else 'OVER'}")
    if args.json:
        import numpy
        import torch

        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "machine": platform.processor() or platform.machine(),
            "cores_used": 1,
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
            "note": note.doc_id,
        }
        args.json.write_text(json.dumps({"meta": meta, "worst_s": worst, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
