"""Same answers: SmolLM2 on real documents through the simple, batched and continuous engines (on a GPU).

Counts the documents whose outputs are identical to the simple engine's, and compares the metrics
that the three sets of outputs get (bf16 batching may flip near-ties; ``--dtype float32`` shows
whether any difference is more than rounding). ``--invariant`` / ``--no-invariant`` turns the
batch-invariant kernels of the simple and batched engines on or off; by default they are as in a
worker (NERFLEET_BATCH_INVARIANT, else on wherever they run). The continuous engine is also
checked against itself: each document decoded alone in its slots against among all the others.

    python bench/same_answers.py --model PATH/SmolLM2-135M-Instruct.Q4_1.gguf --corpus PATH --docs 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import transformers

from nerfleet.evaluation.corpus import build_corpus
from nerfleet.evaluation.grid import score_grid
from nerfleet.evaluation.prompts import load_prompt
from nerfleet.evaluation.scoring import Response, prepare
from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.continuous import ContinuousEngine
from nerfleet.workers.engine import GenerationRequest
from nerfleet.workers.models import load, resolve
from nerfleet.workers.simple import SimpleEngine


def record_tokens(engine) -> dict[str, list[int]]:
    """The generated token ids of each request, as the engine passes them to its results."""
    seen: dict[str, list[int]] = {}
    result = engine._result

    def keep(req, ids, out, truncated, latency):
        seen[req.key] = list(out)
        return result(req, ids, out, truncated, latency)

    engine._result = keep
    return seen


@torch.inference_mode()
def _logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids], device=model.device)).logits[0].float()


def divergences(model, prompts, reference, other) -> list[dict]:
    """Where each differing output first leaves the reference, and by how much the reference's own
    logits preferred its token there (a near-tie is a gap of a few hundredths)."""
    rows = []
    for key, ref in reference.items():
        out = other[key]
        if out == ref:
            continue
        j = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out)))
        row = {"doc": key, "token": j}
        if j < len(ref) and j < len(out):
            logits = _logits(model, prompts[key] + ref[:j])[-1]
            row["logit_gap"] = float(logits[ref[j]] - logits[out[j]])
        rows.append(row)
    return rows


def margins(model, prompts, reference) -> dict:
    """The reference's top-1 minus top-2 logit over all its greedy steps: how often a step is a near-tie."""
    values = []
    for key, ref in reference.items():
        if not ref:
            continue
        logits = _logits(model, prompts[key] + ref)[len(prompts[key]) - 1 : -1]
        top = logits.topk(2, dim=-1).values
        values += (top[:, 0] - top[:, 1]).tolist()
    values.sort()
    return {
        "steps": len(values),
        "median": values[len(values) // 2] if values else None,
        "share_below_0.05": sum(v < 0.05 for v in values) / max(1, len(values)),
        "share_below_0.25": sum(v < 0.25 for v in values) / max(1, len(values)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=50)
    ap.add_argument("--prompt", default="v2")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument(
        "--invariant",
        action=argparse.BooleanOptionalAction,
        help="batch-invariant kernels for the simple and batched engines (default: as a worker, on where they run)",
    )
    ap.add_argument("--only", choices=["batched", "continuous"], help="compare the simple engine with this one only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    build = build_corpus(args.corpus)
    docs = sorted(build.documents, key=lambda d: (d.split != "test", d.doc_id))[: args.docs]
    prompt = load_prompt(args.prompt)
    model, tok = load(resolve(args.model), dtype=args.dtype)
    reqs = [GenerationRequest(d.doc_id, prompt.template, d.text, args.new) for d in docs]
    outputs, seconds, tokens = {}, {}, {}
    # Built one at a time, in this order: the continuous engine switches the shared model's
    # attention to its own, which the eager engines must not inherit.
    engines = [
        ("simple", lambda: SimpleEngine(model, tok, invariant=args.invariant)),
        ("batched", lambda: BatchedEngine(model, tok, batch_size=len(reqs), invariant=args.invariant)),
    ]
    if args.invariant is not True:
        engines.append(("continuous", lambda: ContinuousEngine(model, tok)))
    if args.only:
        engines = [e for e in engines if e[0] in ("simple", args.only)]
    invariant_used = {}
    for name, make in engines:
        engine = make()
        invariant_used[name] = engine.invariant
        if name == "continuous":
            engine.start()  # compiled and captured outside the timing
        tokens[name] = record_tokens(engine)
        t = time.perf_counter()
        outputs[name] = {r.key: r.output for r in engine.generate(reqs)}
        seconds[name] = time.perf_counter() - t
        print(name, f"{seconds[name]:.1f} s", flush=True)
        if name == "continuous":  # its own reference: each document alone in the slots
            tokens[name] = dict(tokens[name])  # the runs alone below record their tokens too
            alone = {r.key: engine.generate([r])[0].output for r in reqs}
            same = sum(alone[k] == outputs[name][k] for k in alone)
            invariant_used["continuous_alone_equals_among_others"] = f"{same}/{len(alone)}"
            engine.close()
    model.set_attn_implementation("sdpa")  # the analysis below: plain forward passes
    simple = SimpleEngine(model, tok, invariant=False)
    prompts = {r.key: simple.encode(r)[0] for r in reqs}
    prepared = {d.doc_id: prepare(d) for d in docs}
    responses = [Response(k, name, args.prompt, out) for name, outs in outputs.items() for k, out in outs.items()]
    scores = score_grid(responses, prepared, {args.prompt: prompt.format}).to_json()
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "batch_invariant": invariant_used,
        "documents": len(docs),
        "prompt": args.prompt,
        "new_tokens": args.new,
        "seconds": seconds,
    }
    for name in [n for n, _ in engines if n != "simple"]:
        same = sum(outputs[name][k] == outputs["simple"][k] for k in outputs["simple"])
        s1 = abs(scores["strategy1"][name][args.prompt]["f1"] - scores["strategy1"]["simple"][args.prompt]["f1"])
        s2 = (
            abs(
                scores["strategy2"][name][args.prompt]["micro"]["f1"]
                - scores["strategy2"]["simple"][args.prompt]["micro"]["f1"]
            )
            if args.prompt != "v1"
            else 0.0
        )
        result[name] = {
            "identical_documents": same,
            "share_identical": same / len(docs),
            "strategy1_f1_difference": s1,
            "strategy2_micro_f1_difference": s2,
            "divergences": divergences(model, prompts, tokens["simple"], tokens[name]),
        }
    result["simple_top2_margins"] = margins(model, prompts, tokens["simple"])
    result["scores"] = {k: scores[k] for k in ("strategy1", "strategy2", "parse_ratio")}
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
