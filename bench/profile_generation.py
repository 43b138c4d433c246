"""Where the compiled engine's time goes on one GPU: prefill eager vs compiled, and the CUDA kernels
of the prefill and of the decoding steps (random-weight model of a study architecture).

    python bench/profile_generation.py --arch mistral-7b --batch 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

from nerfleet.workers.engine import CompiledEngine

sys.path.insert(0, str(Path(__file__).parent))
from generation import ARCHS  # noqa: E402


def seconds(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def kernels(fn, title: str, rows: int) -> dict[str, tuple[int, float]]:
    """Print the CUDA kernels of ``fn``; return name -> (calls, total µs)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(f"\n== {title}")
    print(averages.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=90))
    return {e.key: (e.count, e.self_device_time_total) for e in averages if e.self_device_time_total > 0}


def per_step(short: dict, long: dict, steps: int, rows: int) -> None:
    """The decoding steps' own kernels: a run of ``steps`` more tokens minus the shorter run,
    per step (calls and µs), so the prefill's kernels drop out."""
    diff = {
        k: ((n - short.get(k, (0, 0))[0]) / steps, (us - short.get(k, (0, 0))[1]) / steps)
        for k, (n, us) in long.items()
    }
    diff = {k: v for k, v in diff.items() if v[0] > 0}
    total_n, total_us = sum(v[0] for v in diff.values()), sum(v[1] for v in diff.values())
    print(f"\n== per decoding step: {total_n:.0f} kernels, {total_us / 1000:.2f} ms of kernel time (profiled)")
    for k, (n, us) in sorted(diff.items(), key=lambda kv: -kv[1][1])[:rows]:
        print(f"{us:9.1f} µs {n:7.1f} calls  {us / max(n, 1e-9):7.2f} µs each  {k[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="mistral-7b", choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=640)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    cls, kwargs, _ = ARCHS[args.arch]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cls(**kwargs), dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    tok = SimpleNamespace(pad_token_id=0, chat_template=None)
    ids = torch.randint(1, kwargs["vocab_size"], (args.batch, args.prompt)).tolist()
    eng = CompiledEngine(model, tok, batch_size=args.batch)
    print(f"model {type(eng.model).__name__}, decoding attention {eng.decode_attention}", flush=True)
    eng.compile_prefill = False
    print(f"warm-up (decode step compile) {seconds(lambda: eng._run(ids, 8)):.1f} s", flush=True)
    eager = min(seconds(lambda: eng._run(ids, 1)) for _ in range(2))
    eng.compile_prefill = True
    print(f"warm-up (prefill compile) {seconds(lambda: eng._run(ids, 1)):.1f} s", flush=True)
    compiled = min(seconds(lambda: eng._run(ids, 1)) for _ in range(2))
    full = min(seconds(lambda: eng._run(ids, args.new)) for _ in range(2))
    decode_ms = 1000 * (full - compiled) / (args.new - 1)
    print(
        f"prefill eager {eager:.3f} s, compiled {compiled:.3f} s; {args.new} tokens {full:.3f} s = "
        f"{args.batch * args.new / full:,.0f} tok/s, {decode_ms:.2f} ms per decoding step",
        flush=True,
    )
    short = kernels(lambda: eng._run(ids, 1), "prefill (compiled)", args.rows)
    long = kernels(lambda: eng._run(ids, args.steps + 1), f"prefill + {args.steps} decoding steps", args.rows)
    per_step(short, long, args.steps, 3 * args.rows)


if __name__ == "__main__":
    main()
