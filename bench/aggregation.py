"""What an aggregation's scoring costs with and without the stored calibration rows (a harness:
``score_grid`` in this process, not a worker): one model's 1,002 study answers (v1-v3 on 334
notes, from the committed ``outputs.jsonl.gz``), scored with the echo and oracle rows computed,
without them, and with them read back as stored JSON.

    python bench/aggregation.py [--corpus ../shared/data/clinical-cases-es] [--model smollm2] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from nerfleet.evaluation.corpus import build_corpus
from nerfleet.evaluation.grid import calibration_counts, score_grid
from nerfleet.evaluation.matching import MatchParams
from nerfleet.evaluation.scoring import Response, ResponseCounts, prepare

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ROOT / "results" / "2026-12-01-h200-all-documents" / "outputs.jsonl.gz"
FORMATS = {"v1": "none", "v2": "dict", "v3": "json"}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "clinical-cases-es")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--notes", type=int, default=334)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    documents = {d.doc_id: d for d in build_corpus(args.corpus).documents}
    ids = set(sorted(documents)[: args.notes])
    with gzip.open(OUTPUTS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    responses = [
        Response(r["doc_id"], r["model"], r["prompt"], r["output"])
        for r in rows
        if r["model"] == args.model and r["prompt"] in FORMATS and r["doc_id"] in ids
    ]
    docs, prepare_s = timed(lambda: {i: prepare(documents[i]) for i in sorted(ids)})
    _, with_s = timed(lambda: score_grid(responses, docs, FORMATS))
    _, without_s = timed(lambda: score_grid(responses, docs, FORMATS, calibration=False))
    known, compute_s = timed(lambda: calibration_counts(docs, FORMATS.values(), MatchParams()))
    stored = {k: json.dumps(v.to_json()) for k, v in known.items()}
    back, read_s = timed(lambda: {k: ResponseCounts.from_json(json.loads(v)) for k, v in stored.items()})
    _, stored_s = timed(lambda: score_grid(responses, docs, FORMATS, known=back))
    result = {
        "responses": len(responses),
        "notes": len(docs),
        "prepare_s": prepare_s,
        "score_with_calibration_computed_s": with_s,
        "score_without_calibration_s": without_s,
        "calibration_computed_alone_s": compute_s,
        "calibration_read_from_json_s": read_s,
        "score_with_stored_calibration_s": stored_s,
    }
    for k, v in result.items():
        print(f"{k:36s} {v:.2f}" if isinstance(v, float) else f"{k:36s} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
