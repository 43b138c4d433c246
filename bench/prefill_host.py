"""What a prefill costs the host: SmolLM2-135M's structure (30 layers, its vocabulary, fused and
with the rotary materialised as on a GPU) made 64 wide, so that its arithmetic is negligible and a
prefill's wall time is its Python, dispatch and compiled-region overhead. Eager layers, then the
layers compiled as the engine compiles them on a GPU (``--compiled``). Runs on the CPU.

    python bench/prefill_host.py --corpus ../shared/data/clinical-cases-es            # eager
    python bench/prefill_host.py --corpus ../shared/data/clinical-cases-es --compiled

Prints the median milliseconds of a prefill for rows × width, and the compiled frames at the end
(none compiled during the timed prefills: no recompilation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from archs import ARCHS  # noqa: E402
from continuous import notes, notes_tokenizer, prefill_once  # noqa: E402

from nerfleet.workers.continuous import ContinuousEngine, SlotConfig  # noqa: E402
from nerfleet.workers.engine import GenerationRequest  # noqa: E402
from nerfleet.workers.fusion import fuse  # noqa: E402
from nerfleet.workers.rotary import materialize_rotary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True, help="the notes a tokenizer is trained on")
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    cls, kwargs, _ = ARCHS["smollm2-135m"]
    narrow = {**kwargs, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}
    torch.manual_seed(0)
    model = fuse(AutoModelForCausalLM.from_config(cls(**narrow)).eval(), column_major=True)
    materialize_rotary(model)
    tok = notes_tokenizer(notes(args.corpus, 50), vocab_size=2000)
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=8, slot_len=2048))
    from torch._dynamo.utils import counters

    row: dict = {"compiled": args.compiled, "torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        if args.compiled:
            start = time.perf_counter()
            engine._compile_prefill()  # what the engine does at start on a GPU
            row["compile_s"] = time.perf_counter() - start
        frames = counters["frames"]["total"]

        def prefill(rows: int, width: int) -> float:
            req = GenerationRequest("k", "{clinical_text}", "x", 1)
            start = time.perf_counter()
            prefill_once(engine, [req] * rows, [list(range(5, 5 + width))] * rows)
            return 1000 * (time.perf_counter() - start)

        for rows, width in [(2, 32), (4, 64), (8, 128)]:
            times = [prefill(rows, width) for _ in range(7)]
            row[f"{rows}x{width}_ms"] = statistics.median(times[2:])
            print(json.dumps({f"{rows}x{width}_ms": row[f"{rows}x{width}_ms"]}), flush=True)
        row["frames_compiled_while_timed"] = counters["frames"]["total"] - frames
    print(json.dumps(row, indent=1))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
