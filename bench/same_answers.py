"""Same answers: SmolLM2 on real documents through the simple, batched and compiled engines (on a GPU).

Counts the documents whose outputs are identical to the simple engine's, and compares the metrics
that the three sets of outputs get (bf16 batching may flip near-ties; ``--dtype float32`` shows
whether any difference is more than rounding).

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
from nerfleet.evaluation.prompts import load_prompt
from nerfleet.evaluation.scoring import Response, prepare, score_grid
from nerfleet.workers.engine import BatchedEngine, CompiledEngine, GenerationRequest, SimpleEngine
from nerfleet.workers.models import load, resolve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=50)
    ap.add_argument("--prompt", default="v2")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    build = build_corpus(args.corpus)
    docs = sorted(build.documents, key=lambda d: (d.split != "test", d.doc_id))[: args.docs]
    prompt = load_prompt(args.prompt)
    model, tok = load(resolve(args.model), dtype=args.dtype)
    reqs = [GenerationRequest(d.doc_id, prompt.template, d.text, args.new) for d in docs]
    outputs, seconds = {}, {}
    for name, engine in (
        ("simple", SimpleEngine(model, tok)),
        ("batched", BatchedEngine(model, tok, batch_size=len(reqs))),
        ("compiled", CompiledEngine(model, tok, batch_size=len(reqs))),
    ):
        if name == "compiled":
            engine.generate(reqs[:2])  # compile outside the timing
        t = time.perf_counter()
        outputs[name] = {r.key: r.output for r in engine.generate(reqs)}
        seconds[name] = time.perf_counter() - t
        print(name, f"{seconds[name]:.1f} s", flush=True)
    prepared = {d.doc_id: prepare(d) for d in docs}
    responses = [Response(k, name, args.prompt, out) for name, outs in outputs.items() for k, out in outs.items()]
    scores = score_grid(responses, prepared, {args.prompt: prompt.format}).to_json()
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "documents": len(docs),
        "prompt": args.prompt,
        "new_tokens": args.new,
        "seconds": seconds,
    }
    for name in ("batched", "compiled"):
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
        }
    result["scores"] = {k: scores[k] for k in ("strategy1", "strategy2", "parse_ratio")}
    print(json.dumps({k: v for k, v in result.items() if k != "scores"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
