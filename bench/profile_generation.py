"""Where the compiled engine's time goes on one GPU: prefill eager vs compiled, and the CUDA kernels
of the prefill and of the decoding steps (random-weight model of a study architecture).

    python bench/profile_generation.py --arch mistral-7b --batch 128
    python bench/profile_generation.py --arch mistral-7b --no-last-position      # A/B of the prefill shortcut
    python bench/profile_generation.py --arch mistral-7b --prefill-mode max-autotune-no-cudagraphs
    python bench/profile_generation.py --arch mistral-7b --no-column-major       # fused weights as nn.Linear's
    python bench/profile_generation.py --arch mistral-7b --step-blas cublas      # the step's products on cuBLAS
    python bench/profile_generation.py --arch mistral-7b --no-static-mask        # the step's mask copied in
    python bench/profile_generation.py --arch mistral-7b --decode-splits 3       # keys of a row split 3 ways
    python bench/profile_generation.py --arch mistral-7b --null-attention        # the step without attention
    python bench/profile_generation.py --arch mistral-7b --attention-twice       # a second attention call a layer
    python bench/profile_generation.py --arch mistral-7b --no-rotary             # cos/sin inside every layer
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

from nerfleet.workers import decoding
from nerfleet.workers.engine import CompiledEngine, preferred_blas

sys.path.insert(0, str(Path(__file__).parent))
from generation import ARCHS  # noqa: E402


def seconds(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def kernels(fn, title: str, rows: int) -> None:
    """Print the CUDA kernels of ``fn``, then its matrix products by shape with their rate."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    print(f"\n== {title}")
    print(averages.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=90))
    print(f"\n== {title}: matrix products by shape")
    for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.device_time_total):
        shapes = [s for s in e.input_shapes if s]
        if e.key != "aten::mm" or len(shapes) < 2 or not e.device_time_total:
            continue
        (m, k), (_, n) = shapes[0], shapes[1]
        seconds = e.device_time_total / 1e6
        print(
            f"{m:>7} x {k:>6} @ {n:>6}: {e.count:>3} calls, {1000 * seconds / e.count:8.3f} ms each, "
            f"{2 * m * k * n * e.count / seconds / 1e12:6.0f} TFLOP/s"
        )


def step_kernels(eng: CompiledEngine, ids: list[list[int]], new: int, rows: int) -> None:
    """The kernels of the decoding steps alone, per step: the profiler starts at the first
    decoding step of a run, after its prefill, and stops when the run ends, so each step's small
    eager operations (argmax, EOS bookkeeping) count too. A run of more tokens minus a shorter
    one does not isolate them: the cache length differs, so the prefills compile differently.
    The run must be of an already compiled shape (``new`` as timed), else the window holds the
    new shape's compilation, CUDA-graph warm-up and recording."""
    steps = new - 1
    step = eng._compiled_step()
    prof = profile(activities=[ProfilerActivity.CUDA])

    def profiled(**kwargs):
        if not prof.profiler or not prof.profiler.enabled:
            torch.cuda.synchronize()
            prof.start()
        return step(**kwargs)

    eng._step = profiled
    try:
        t = time.perf_counter()
        eng._run(ids, new)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
        prof.stop()
    finally:
        eng._step = step
    found = [(e.key, e.count / steps, e.self_device_time_total / steps) for e in prof.key_averages()]
    found = [f for f in found if f[2] > 0]
    print(
        f"\n== per decoding step ({steps} steps): {sum(f[1] for f in found):.0f} kernels, "
        f"{sum(f[2] for f in found) / 1000:.2f} ms of kernel time (under the profiler; the whole run "
        f"{wall:.2f} s with its prefill)"
    )
    for key, calls, us in sorted(found, key=lambda f: -f[2])[:rows]:
        print(f"{us:9.1f} µs {calls:7.1f} calls  {us / calls:7.2f} µs each  {key[:110]}")


def attention_alone(eng: CompiledEngine, heads: int, filled: int = 768) -> None:
    """The decoding attention replayed from a CUDA graph over the engine's own cache after a run, 32
    calls back to back, then with the step's gate/up product of each layer between them, then over
    the same tensors refilled with random values, then over fresh ones: which of the step's
    surroundings, its data or its memory makes the op slower in the step than alone."""
    from decode_attention import between_products, per_graphed_call

    layers = eng._cache[1].layers
    keys = layers[0].keys
    b, kvh, n, d = keys.shape
    live = torch.zeros(b, n, dtype=torch.int8, device=keys.device)
    live[:, :filled] = 1
    bounds = decoding.bounds_of(live)
    q = torch.randn(b, heads, 1, d, dtype=keys.dtype, device=keys.device)
    x = torch.randn(b, eng.model.config.hidden_size, dtype=keys.dtype, device=keys.device)
    weights = [layer.mlp.gate_up_proj.weight for layer in eng.model.model.layers]
    scale = d**-0.5

    def per_layer_us(fn) -> float:
        return 1e6 * per_graphed_call(fn, len(layers))

    def attend_all(caches) -> list:
        return [decoding.attend(q, k, v, live, bounds, scale) for k, v in caches]

    own = [(layer.keys, layer.values) for layer in layers]
    with torch.inference_mode(), preferred_blas(eng.step_blas):
        print("\n== the decoding attention alone, graphed, 32 calls (µs a layer)")
        print(f"  the engine's cache, its values after the run: {per_layer_us(lambda: attend_all(own)):7.1f}")
        print("  between the model's gate/up products:")
        between_products(x, weights, [(q, k, v) for k, v in own], live, bounds, scale)
        for k, v in own:
            k.normal_(), v.normal_()
        print(f"  the engine's cache refilled with random values: {per_layer_us(lambda: attend_all(own)):7.1f}")
        fresh = [(torch.randn_like(k), torch.randn_like(v)) for k, v in own[:8]] * 4
        print(f"  8 fresh random caches, each called 4 times: {per_layer_us(lambda: attend_all(fresh)):7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="mistral-7b", choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=640)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument(
        "--last-position",
        action=argparse.BooleanOptionalAction,
        default=CompiledEngine.last_position_prefill,
        help="the prefill's last layer after attention at the last position only",
    )
    ap.add_argument("--prefill-mode", help="torch.compile mode of the prefill (e.g. max-autotune-no-cudagraphs)")
    # every other flag defaults to the engine's own setting, so a plain run profiles the worker's engine
    engine = CompiledEngine
    flag = argparse.BooleanOptionalAction
    ap.add_argument("--column-major", action=flag, default=engine.column_major_weights, help="weights transposed")
    ap.add_argument("--prefill-blas", choices=["cublas", "cublaslt"], default=engine.prefill_blas, help="prefill BLAS")
    ap.add_argument("--step-blas", choices=["cublas", "cublaslt"], default=engine.step_blas, help="step BLAS")
    ap.add_argument("--static-mask", action=flag, default=engine.static_step_mask, help="mask at a fixed address")
    ap.add_argument("--rotary", action=flag, default=engine.materialize_rotary, help="cos/sin once per pass")
    ap.add_argument("--decode-splits", type=int, help="key chunks per row of the decoding attention (default: planned)")
    ap.add_argument(
        "--null-attention",
        action="store_true",
        help="the decoding step's attention returns its query (wrong tokens): the step's time without it, unprofiled",
    )
    ap.add_argument(
        "--attention-twice",
        action="store_true",
        help="the decoding step's attention op runs twice a layer, back to back (timing only): the unprofiled step "
        "grows by what a second call costs right after the first",
    )
    ap.add_argument("--attention-alone", action="store_true", help="then the decoding attention alone (see its doc)")
    ap.add_argument("--decode-tile", help="the decoding attention's keys per tile, warps, stages: e.g. 128,8,2")
    args = ap.parse_args()
    if args.decode_tile:
        decoding.KEY_TILE, decoding.NUM_WARPS, decoding.NUM_STAGES = (int(x) for x in args.decode_tile.split(","))
    if args.null_attention:
        decoding.attend = lambda query, key, value, live, bounds, scale, splits=None: query.transpose(1, 2)
    if args.attention_twice:
        once = decoding.attend

        def twice(query, key, value, live, bounds, scale, splits=None):
            # A scale one part in a million apart, so that no compiler pass can merge the two calls
            # of this pure op as one (a custom op on the CPU was not merged even with equal
            # arguments; the compiled Triton op was not checked). Timing only; the tokens may differ.
            first = once(query, key, value, live, bounds, scale, splits)
            return (first + once(query, key, value, live, bounds, scale * (1 + 1e-6), splits)) / 2

        decoding.attend = twice
    if args.decode_splits:
        decoding.plan_splits = lambda programs, keys, sms: args.decode_splits
    engine.static_step_mask = args.static_mask
    engine.materialize_rotary = args.rotary
    engine.prefill_blas, engine.step_blas = args.prefill_blas, args.step_blas
    engine.last_position_prefill = args.last_position
    engine.prefill_compile_mode = args.prefill_mode
    engine.column_major_weights = args.column_major
    cls, kwargs, _ = ARCHS[args.arch]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cls(**kwargs), dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    tok = SimpleNamespace(pad_token_id=0, chat_template=None)
    ids = torch.randint(1, kwargs["vocab_size"], (args.batch, args.prompt)).tolist()
    eng = CompiledEngine(model, tok, batch_size=args.batch)
    print(
        f"model {type(eng.model).__name__}, decoding attention {eng.decode_attention}, last layer at the last "
        f"position only: {eng._last_position}, prefill compile mode {eng.prefill_compile_mode}, "
        f"column-major weights: {eng.column_major_weights}, static mask {eng.static_step_mask}, "
        f"cos/sin once per pass {eng.materialize_rotary}, "
        f"BLAS prefill {eng.prefill_blas}, step {eng.step_blas}, decoding splits {args.decode_splits or 'planned'}, "
        f"tile/warps/stages {decoding.KEY_TILE}/{decoding.NUM_WARPS}/{decoding.NUM_STAGES}",
        flush=True,
    )
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
    kernels(lambda: eng._run(ids, 1), "prefill (compiled)", args.rows)
    step_kernels(eng, ids, args.new, 3 * args.rows)
    if args.attention_alone:
        attention_alone(eng, ARCHS[args.arch][1]["num_attention_heads"])


if __name__ == "__main__":
    main()
