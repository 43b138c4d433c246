"""Scoring speed on the study's full grid: 6 models × 3 prompts × 90 documents = 1,620 responses.

Responses are synthetic but shaped like real ones (~300 words, a structure for v2/v3 holding some
gold entities, prose around it). Prints the rate on one core, with and without nervaluate; every
run includes what the aggregation computes: the echo and oracle rows (540 more responses), the
character-span scores and the bootstrap intervals (1,000 resamples) of every cell.

    taskset -c 0 python bench/scoring.py [--corpus ../shared/data/clinical-cases-es] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from nerfleet.evaluation.corpus import build_corpus  # noqa: E402
from nerfleet.evaluation.grid import score_grid
from nerfleet.evaluation.scoring import Response, prepare  # noqa: E402
from nerfleet.evaluation.spans import LABELS  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "clinical-cases-es"


def synthetic(doc, fmt: str, rng: random.Random) -> str:
    ents = [(doc.text[s.start : s.end], s.label) for s in doc.spans if rng.random() < 0.4]
    words = doc.text.split()
    prose = " ".join(rng.choice(words) for _ in range(300 - 3 * len(ents)))
    if fmt == "dict":
        lists = tuple("; ".join(e for e, lab in ents if lab == L) for L in LABELS)
        d, s, p = lists
        return f"Here are the entities: {{diseases: [{d}], symptoms: [{s}], medical procedures: [{p}]}} " + prose
    if fmt == "json":
        return json.dumps({"annotations": [{"entity": e, "category": lab.lower()} for e, lab in ents]}) + " " + prose
    return " ".join(e for e, _ in ents) + " " + prose


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=DEFAULT)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    timings = {}
    build = build_corpus(args.corpus)
    docs = sorted(build.documents, key=lambda d: d.doc_id)[:90]
    rng = random.Random(0)
    formats = {"v1": "none", "v2": "dict", "v3": "json"}
    responses = [
        Response(d.doc_id, f"model-{m}", p, synthetic(d, f, rng))
        for m in range(6)
        for p, f in formats.items()
        for d in docs
    ]
    words = sum(len(r.output.split()) for r in responses) / len(responses)
    print(f"{len(responses)} responses over {len(docs)} documents, {words:.0f} words each on average")
    print(f"{'what':<44}{'seconds':>9}{'responses/s':>13}")
    t = time.perf_counter()
    prepared = {d.doc_id: prepare(d) for d in docs}
    print(f"{'prepare gold documents':<44}{time.perf_counter() - t:>9.2f}")
    for label, nerv in (("strategies, spans, ratio, intervals", False), ("… plus nervaluate's four schemas", True)):
        t = time.perf_counter()
        score_grid(responses, prepared, formats, with_nervaluate=nerv)
        dt = time.perf_counter() - t
        timings[label] = dt
        print(f"{label:<44}{dt:>9.2f}{len(responses) / dt:>13.0f}")
    if args.json:
        import platform

        import numpy

        meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version()}
        meta["numpy"] = numpy.__version__
        out = {"meta": meta, "responses": len(responses), "documents": len(docs), "seconds": timings}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
