"""What a prefill's attention costs the first time a shape is seen, by SDPA backend.

The continuous engine prefilled padded groups of every size and bucketed width (session 19; its
prefills are packed now, bench/NOTES.md session 20), so most prefills brought a (rows, width) the
process had not run before. cuDNN's attention builds (and may compile) a graph
per shape; the flash backend's kernels are compiled in. For each backend and each of the study's
attention shapes (Mistral-7B: 32 query heads, 8 key/value heads of 128; SmolLM2-135M: 9, 3, 64),
this times a causal grouped-query SDPA over shapes of a fleet run's kind, each for the first time
and again, and prints milliseconds a call.

    python bench/sdpa_shapes.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS = {"mistral-7b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}


def call_ms(q, k, v) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", type=int, default=12, help="distinct (rows, width) per backend and model")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    draw = random.Random(0)
    rows = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}
    for arch, (heads, kv_heads, dim) in HEADS.items():
        # one list of shapes per backend, none shared between them: each is new to its backend
        shapes = [(draw.randint(1, 64), 32 * draw.randint(8, 40)) for _ in range(2 * args.shapes)]
        for b, (name, backend) in enumerate(BACKENDS.items()):
            first, again = [], []
            with sdpa_kernel([backend]):
                warm = torch.randn(1, heads, 64, dim, device="cuda", dtype=torch.bfloat16)
                call_ms(warm, warm[:, :kv_heads], warm[:, :kv_heads])  # the backend's own first use
                for n, width in shapes[b::2]:
                    q = torch.randn(n, heads, width, dim, device="cuda", dtype=torch.bfloat16)
                    k = torch.randn(n, kv_heads, width, dim, device="cuda", dtype=torch.bfloat16)
                    v = torch.randn_like(k)
                    first.append(call_ms(q, k, v))
                    again.append(call_ms(q, k, v))
            row = {
                "arch": arch,
                "backend": name,
                "shapes": len(first),
                "first_call_ms_median": statistics.median(first),
                "first_call_ms_max": max(first),
                "again_ms_median": statistics.median(again),
            }
            rows["results"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
