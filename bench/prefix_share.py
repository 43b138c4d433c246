"""How much of a run's prompt tokens the continuous engine's kept prefixes cover: for each prompt,
the run two or more prompts share (``workers.prefixes.shared_prefix``, as the engine finds it), how
many prompts start with it, and the share of all prompt tokens. Tokenizer work only (a CPU).

    python bench/prefix_share.py [--model smollm2] [--corpus ../shared/data/clinical-cases-es] [--notes 334]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nerfleet.evaluation.corpus import build_corpus
from nerfleet.evaluation.prompts import load_prompt
from nerfleet.workers.engine import GenerationRequest
from nerfleet.workers.models import load, resolve
from nerfleet.workers.prefixes import shared_prefix
from nerfleet.workers.simple import SimpleEngine

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "clinical-cases-es")
    ap.add_argument("--notes", type=int, default=334)
    ap.add_argument("--longest", type=int, default=384, help="SlotConfig.prefix_len")
    args = ap.parse_args()
    model, tok = load(resolve(args.model), device="cpu", dtype="float32")
    engine = SimpleEngine(model, tok)  # its encode_all: the prompts exactly as an engine builds them
    notes = sorted(build_corpus(args.corpus).documents, key=lambda d: d.doc_id)[: args.notes]
    total = kept = 0
    for name in ("v1", "v2", "v3"):
        template = load_prompt(name).template
        ids = [i for i, _ in engine.encode_all([GenerationRequest(d.doc_id, template, d.text, 256) for d in notes])]
        length = shared_prefix(ids[:8], args.longest)
        starting = sum(1 for i in ids if i[:length] == ids[0][:length] and len(i) > length)
        total += sum(map(len, ids))
        kept += length * starting
        print(f"{name}: prefix {length} tokens, {starting}/{len(ids)} prompts start with it, "
              f"prompts {sum(map(len, ids)) / len(ids):.0f} tokens on average")  # fmt: skip
    print(f"share of all prompt tokens in kept prefixes: {kept / total:.3f}")


if __name__ == "__main__":
    main()
