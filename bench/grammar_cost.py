"""What one guided row's mask costs on the host, per grammar: xgrammar's fill of the next-token
bitmask, one row at a time, at the states a decoding walk reaches (random logits under the mask,
so rows wander through long items as a weak model does), with SmolLM2's tokenizer.

The guided continuous engine fills every guided slot's mask each step; this cost times the slots
is what a decoding step has to hide. ``--ebnf FILE`` measures another v2 grammar beside the
project's (``bench/v2-bounded.ebnf``: the bounded ``item ::= [...]{1,100}`` it replaced).

    python bench/grammar_cost.py [--rows 48] [--steps 80] [--ebnf bench/v2-bounded.ebnf] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import torch
import transformers
import xgrammar as xgr

from nerfleet.evaluation.grammars import V2_GRAMMAR, V3_SCHEMA
from nerfleet.workers.models import load, resolve


def walk(compiled, vocab_size: int, rows: int, steps: int, seed: int = 0) -> dict:
    """Median and 90th-percentile seconds of one row's fill over a random walk of ``steps``."""
    torch.manual_seed(seed)
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(rows)]
    bitmask = xgr.allocate_token_bitmask(rows, vocab_size)
    per_row = []
    for _ in range(steps):
        live = [(i, m) for i, m in enumerate(matchers) if not m.is_terminated()]
        if not live:
            break
        start = time.perf_counter()
        for i, m in live:
            m.fill_next_token_bitmask(bitmask, i)
        per_row.append((time.perf_counter() - start) / len(live))
        logits = torch.randn(rows, vocab_size)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab_size)
        for i, m in live:
            m.accept_token(int(logits[i].argmax()))
    per_row.sort()
    return {
        "steps": len(per_row),
        "median_us_per_row": 1e6 * statistics.median(per_row),
        "p90_us_per_row": 1e6 * per_row[int(0.9 * (len(per_row) - 1))],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", help="whose tokenizer (a registry name, folder or GGUF)")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--ebnf", type=Path, help="another v2 grammar to measure beside the project's")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model, tok = load(resolve(args.model))
    vocab = model.config.vocab_size
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab))
    grammars = {
        "v2 (evaluation/grammars.py)": lambda: compiler.compile_grammar(V2_GRAMMAR),
        "v3 (evaluation/grammars.py)": lambda: compiler.compile_json_schema(
            json.dumps(V3_SCHEMA), any_whitespace=False
        ),
    }
    if args.ebnf:
        grammars[f"v2 ({args.ebnf.name})"] = lambda: compiler.compile_grammar(args.ebnf.read_text())
    rows = {}
    for name, compile_ in grammars.items():
        start = time.perf_counter()
        compiled = compile_()
        rows[name] = {"compile_s": time.perf_counter() - start, **walk(compiled, vocab, args.rows, args.steps)}
        r = rows[name]
        print(f"{name:40s} compile {r['compile_s']:5.2f} s  fill {r['median_us_per_row']:6.0f} us a row "
              f"(p90 {r['p90_us_per_row']:.0f}), {r['steps']} steps", flush=True)  # fmt: skip
    result = {
        "host": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {
            "xgrammar": version("xgrammar"),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "tokenizer": args.model,
        "rows": args.rows,
        "grammars": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
