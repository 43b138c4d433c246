"""How many times the compiled engine compiles over batches of different shapes, and what each costs.

A worker meets a new batch shape (rows × width bucket) every few batches of real documents; with
``dynamic=False`` each one is compiled apart. This runs batches of several shapes through the
compiled engine for a given ``dynamic`` setting and prints, per batch, its time, whether its tokens
equal the simple engine's, and the number of graphs dynamo has compiled so far.

    python bench/compile_shapes.py --model PATH --dynamic none        # on a GPU: the engine's own path
    python bench/compile_shapes.py --model PATH --dynamic none --device cpu  # CPU: step compiled, no graphs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig

from nerfleet.evaluation.prompts import SLOT
from nerfleet.workers.engine import CompiledEngine, GenerationRequest, SimpleEngine
from nerfleet.workers.models import load, resolve

DEMO = Path(__file__).resolve().parents[1] / "nerfleet/data/demo-corpus/distemist/txt"
#: (rows, characters of each document): widths and row counts change from batch to batch.
BATCHES = [(4, 300), (4, 500), (3, 700), (4, 200), (2, 900), (4, 1300)]


class CpuCompiledEngine(CompiledEngine):
    """The decoding step compiled on the CPU too (the engine compiles only on CUDA)."""

    def _compiled_step(self):
        if self._step is None:
            self._step = self.model.get_compiled_call(CompileConfig(fullgraph=False, dynamic=self.compile_dynamic))
        return self._step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dynamic", choices=["false", "none", "true"], default="false")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--new", type=int, default=12)
    args = ap.parse_args()
    model, tok = load(resolve(args.model), device=args.device, dtype="float32" if args.device == "cpu" else "auto")
    cls = CompiledEngine if args.device.startswith("cuda") else CpuCompiledEngine
    cls.compile_dynamic = {"false": False, "none": None, "true": True}[args.dynamic]
    engine = cls(model, tok, batch_size=8)
    reference = SimpleEngine(model, tok, invariant=False)
    texts = [p.read_text() for p in sorted(DEMO.glob("*.txt"))]
    for k, (rows, chars) in enumerate(BATCHES):
        reqs = [
            GenerationRequest(f"{k}-{i}", f"Text: {SLOT}", texts[i][: chars - 37 * i], args.new) for i in range(rows)
        ]
        t = time.perf_counter()
        out = engine.generate(reqs)
        seconds = time.perf_counter() - t
        ids = [len(engine.encode(r)[0]) for r in reqs]
        same = [r.output for r in out] == [r.output for r in reference.generate(reqs)]
        print(
            f"batch {k}: {rows} rows, width {engine._width(max(ids))}: {seconds:6.1f} s, "
            f"{'same tokens' if same else 'DIFFERENT tokens'} as the simple engine, "
            f"graphs compiled so far {counters['stats']['unique_graphs']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
