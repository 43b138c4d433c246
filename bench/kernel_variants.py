"""Each compiled variant of one Triton kernel in a Triton cache, and how its PTX loads memory.

The decoding attention takes 137 µs a layer alone and 156 in the Mistral step (bench/NOTES.md), with
the same tensors. The step reaches it through inductor's code, the rows alone through Triton's own
launcher (or inductor's, compiled alone); each compiles its own variant, specialised on which
pointers and integers it may assume 16-divisible. A variant that cannot assume it loads the keys in
narrower pieces. Run a benchmark with ``TRITON_CACHE_DIR`` set, then:

    python bench/kernel_variants.py "$TRITON_CACHE_DIR" partial_kernel
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

LOAD = re.compile(r"\b(ld\.global(?:\.[a-z0-9]+)*)")
# pipelined loads and their bytes, which PTX writes in hex (0x10)
ASYNC_COPY = re.compile(r"\b(cp\.async[.\w]*)\s+\[[^\]]+\],\s*\[[^\]]+\],\s*(0x[0-9a-fA-F]+|\d+)")


def variant(ptx: Path) -> dict:
    text = ptx.read_text()
    meta_file = ptx.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    keep = ("num_warps", "num_stages", "shared", "num_ctas", "maxnreg")
    return {
        "dir": ptx.parent.name[:12],
        "meta": {k: meta[k] for k in keep if k in meta},
        "loads": dict(
            (
                Counter(m.group(1) for m in LOAD.finditer(text))
                + Counter(f"{m[1]} {int(m[2], 0)} B" for m in ASYNC_COPY.finditer(text))
            ).most_common()
        ),
        "ptx_lines": text.count("\n"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache", type=Path, help="a TRITON_CACHE_DIR")
    ap.add_argument("name", help="the kernel's function name")
    args = ap.parse_args()
    found = sorted(args.cache.rglob(f"{args.name}.ptx"))
    if not found:
        raise SystemExit(f"no {args.name}.ptx under {args.cache}")
    for ptx in found:
        v = variant(ptx)
        print(f"{v['dir']}: {v['meta']}, {v['ptx_lines']} PTX lines")
        for op, n in v["loads"].items():
            print(f"    {n:5d} {op}")


if __name__ == "__main__":
    main()
