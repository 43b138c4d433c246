"""What a guided step costs beside the forward (a harness): the first calls of xgrammar's mask
kernel on a GPU (Triton compiles it per class of row count: one row, a multiple of 16, any other)
and the host's fill of N guided rows' masks through :class:`nerfleet.workers.guided.Masks`, half
v2 and half v3, walked under random logits with a 256-token budget as the engine walks them.

    python bench/guided_host.py --model FOLDER [--rows 260 412] [--json FILE]

``FOLDER``: whose tokenizer (bench/fleet.py's random models have a 32 k BPE trained on the corpus).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version

import numpy as np
import torch

from nerfleet.workers.guided import Grammars, Masks, xgrammar
from nerfleet.workers.models import load, resolve


def kernel_first_calls(vocab: int) -> dict:
    """Milliseconds of the mask kernel's first call and its best later call, by row count."""
    xgr, out = xgrammar(), {}
    for rows in (412, 397, 400, 1, 260, 16):
        logits = torch.randn(rows, vocab, device="cuda")
        bitmask = torch.full((rows, (vocab + 31) // 32), -1, dtype=torch.int32, device="cuda")
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=vocab)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[rows] = {"first_ms": 1e3 * times[0], "then_ms": 1e3 * min(times[1:])}
        print(f"rows {rows}: first {times[0] * 1e3:.1f} ms, then {min(times[1:]) * 1e3:.3f} ms", flush=True)
    return out


def fill_per_step(tokenizer, rows: int, steps: int = 220, budget: int = 256) -> dict:
    """Milliseconds of ``Masks.fill`` a step for ``rows`` guided rows (accepting the last tokens,
    filling the bitmask, the closing preference near the budget), on the host."""
    vocab = len(tokenizer)
    masks = Masks(Grammars(tokenizer, vocab), rows)
    fmts = ["dict", "json"] * (rows // 2)
    matchers = [masks.matcher(f) for f in fmts]
    draw = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps):
        live = [(i, m, f, budget - step) for i, (m, f) in enumerate(zip(matchers, fmts))]
        start = time.perf_counter()
        bitmask = masks.fill(len(fmts), live)
        times.append(time.perf_counter() - start)
        logits = torch.randn(len(fmts), vocab, generator=draw)
        masks.mask(logits, bitmask)
        for m, token in zip(matchers, logits.argmax(-1).tolist()):
            if not m.is_terminated():
                masks.accept(m, token)
    ms = np.array(times) * 1e3
    row = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}
    row["ended"] = sum(m.is_terminated() for m in matchers)
    print(f"rows {rows}: fill ms a step median {row['median_ms']:.2f} p90 {row['p90_ms']:.2f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="whose tokenizer (a folder, GGUF or registry name)")
    ap.add_argument("--rows", type=int, nargs="+", default=[260, 412])
    ap.add_argument("--json")
    args = ap.parse_args()
    _, tokenizer = load(resolve(args.model), device="cpu")
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "xgrammar": version("xgrammar")},
        "fill": {rows: fill_per_step(tokenizer, rows) for rows in args.rows},
    }
    if torch.cuda.is_available():
        result["kernel"] = kernel_first_calls(len(tokenizer))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
