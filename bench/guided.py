"""What guided decoding costs: generated tokens/s with and without it, same model, notes and batch.

Runs an engine on the same N real notes with the v3 prompt, unguided and then as ``v3+guided``
(and v2 likewise), and reports generated tokens/s of each, the overhead (1 − guided/unguided
tokens/s) and the host time spent on the grammar per step: the batched engine's logits processor,
or the continuous engine's slot masks (``--engine continuous``, ``--batch`` slots).

    python bench/guided.py --model qwen2.5-coder-0.5b-instruct --corpus PATH --docs 64 --batch 64 --json OUT
    python bench/guided.py --engine continuous --model ... --docs 512 --batch 256 --json OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from nerfleet.evaluation.corpus import build_corpus
from nerfleet.evaluation.parsing import parse
from nerfleet.evaluation.prompts import load_prompt
from nerfleet.workers import guided
from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.engine import GenerationRequest
from nerfleet.workers.models import load, resolve


def timed_processor() -> list[float]:
    """Wrap the processor's call to add up its time (synchronised on CUDA, so the mask work is counted)."""
    spent: list[float] = []
    call = guided.GuidedLogits.__call__

    def wrapper(self, input_ids, scores):
        import torch

        t = time.perf_counter()
        out = call(self, input_ids, scores)
        if scores.device.type == "cuda":
            torch.cuda.synchronize()
        spent.append(time.perf_counter() - t)
        return out

    guided.GuidedLogits.__call__ = wrapper
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--engine", choices=("batched", "continuous"), default="batched")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    spec = resolve(args.model)
    model, tok = load(spec)
    if args.engine == "continuous":
        from nerfleet.workers.continuous import ContinuousEngine, SlotConfig

        engine = ContinuousEngine(model, tok, chat=spec.chat, config=SlotConfig(slots=args.batch))
    else:
        engine = BatchedEngine(model, tok, chat=spec.chat, batch_size=args.batch, invariant=False)
    stats = getattr(engine, "stats", None)
    docs = sorted(build_corpus(args.corpus).documents, key=lambda d: d.doc_id)[: args.docs]
    spent = timed_processor()
    rows = []
    for base in ("v2", "v3"):
        for name in (base, base + "+guided", base):  # the unguided run twice: the first warms the GPU up
            p = load_prompt(name)
            reqs = [
                GenerationRequest(f"{name}{i}", p.template, d.text, args.max_new_tokens, p.format if p.guided else None)
                for i, d in enumerate(docs)
            ]
            spent.clear()
            before = dict(stats or {})
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            results = engine.generate(reqs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            tokens = sum(r.output_tokens for r in results)
            if stats is not None:  # the continuous engine counts its own steps and guided host time
                steps = stats["steps"] - before.get("steps", 0)
                guide_s = stats["guide_s"] - before.get("guide_s", 0.0)
                step_ms = 1000 * (stats["decode_s"] - before.get("decode_s", 0.0)) / max(1, steps)
            else:  # the batched engine: one timed processor call a step
                steps, guide_s, step_ms = len(spent), sum(spent), None
            strict = sum(parse(r.output, p.format).strict for r in results) / len(results)
            rows.append(
                {
                    "condition": name,
                    "seconds": dt,
                    "generated_tokens": tokens,
                    "tok_per_s": tokens / dt,
                    "strict_ratio": strict,
                    "processor_ms_per_step": 1000 * guide_s / max(1, steps),
                    "processor_share": guide_s / dt,
                    # the continuous engine: a decoding step's time, mask included (answers of other
                    # lengths change tokens/s; they do not change what a step costs)
                    "step_ms": step_ms,
                }
            )
            r = rows[-1]
            print(
                f"{name:<12}{dt:>8.2f} s{tokens:>8} tok{r['tok_per_s']:>10.0f} tok/s  strict {strict:.2f}"
                f"  processor {r['processor_ms_per_step']:.2f} ms/step ({100 * r['processor_share']:.1f}%)"
                + (f"  step {step_ms:.2f} ms" if step_ms is not None else "")
            )
    for base in ("v2", "v3"):
        free = next(r for r in reversed(rows) if r["condition"] == base)
        g = next(r for r in rows if r["condition"] == base + "+guided")
        line = f"{base}: guided runs at {g['tok_per_s'] / free['tok_per_s']:.3f} of the unguided tokens/s"
        if free["step_ms"]:
            line += f"; a step costs {g['step_ms'] / free['step_ms']:.3f} of the unguided one"
        print(line)
    if args.json:
        import transformers
        import xgrammar  # noqa: F401

        meta = {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "model": args.model,
            "engine": args.engine,
            "docs": len(docs),
            "batch": args.batch,
            "max_new_tokens": args.max_new_tokens,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
