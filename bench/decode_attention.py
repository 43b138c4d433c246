"""One decoding step's attention on this GPU: SDPA vs FlexAttention's decoding kernel vs nerfleet's
split-KV Triton op, at the study's shapes (static cache of 896 positions, 768 of them live).

Time per call (CUDA events around 20 queued calls, median of 7), the bytes of live keys and values over that time, and
the largest difference from a float32 reference; then the Triton op's tile/warps/stages sweep.

    python bench/decode_attention.py --out bench/results/decode-attention-h100.json
    python bench/decode_attention.py --cold [--no-sweep]   # one cache per layer, graphed, and its surroundings
    python bench/decode_attention.py --lengths   # at each live length a generation's steps meet
    python bench/decode_attention.py --bounds    # the op's key bounds compiled as in the step = eager
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import seconds_per_call as timed  # bench/, the script's folder

from nerfleet.workers import decoding
from nerfleet.workers.attention import _flex, block_mask, gqa_attention
from nerfleet.workers.engine import preferred_blas

#: Key splits per row swept (None: as the op plans them for this GPU).
SPLITS = (None, 2, 3, 4)

SHAPES = {  # name: batch, query heads, key/value heads, head width
    "mistral-7b b128": (128, 32, 8, 128),
    "llama-2-7b b64": (64, 32, 32, 128),
    "smollm2-135m b128": (128, 9, 3, 64),
    "mistral-7b b1": (1, 32, 8, 128),
}


def inputs(shape, total: int, filled: int, padded: bool):
    b, h, kvh, d = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, kvh, total, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, kvh, total, d, device="cuda", dtype=torch.bfloat16, generator=g)
    live = torch.zeros(b, total, dtype=torch.long, device="cuda")
    starts = torch.randint(0, 400, (b,), generator=g, device="cuda") if padded else torch.zeros(b, device="cuda")
    pos = torch.arange(total, device="cuda")
    live[(pos[None] >= starts[:, None]) & (pos[None] < filled)] = 1
    return q, k, v, live


def busy(seconds: float) -> None:
    """Keep the GPU busy first: in session 7 the first table, timed right after start-up, gave the
    Triton op 209 µs where the sweep after it gave the same kernel 144."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def graphed(fn):
    """``fn`` captured once in a CUDA graph; the returned function replays it and gives its output."""
    fn()  # compiles the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


def per_graphed_call(fn, calls: int) -> float:
    """Seconds per call of ``fn``, which makes ``calls`` calls, replayed from one CUDA graph."""
    return timed(graphed(fn), reps=3) / calls


def case(name: str, total: int, filled: int, padded: bool) -> dict:
    shape = SHAPES[name]
    b, h, kvh, d = shape
    q, k, v, live = inputs(shape, total, filled, padded)
    scale = d**-0.5
    ref = F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=live.bool()[:, None, None], scale=scale, enable_gqa=True
    ).transpose(1, 2)
    nbytes = int(live.sum()) * kvh * d * 2 * 2
    module = type("M", (), {"num_key_value_groups": h // kvh})()
    dense = live.bool()[:, None, None, :]
    runs = {"sdpa (whole cache)": lambda: gqa_attention(module, q, k, v, dense, scaling=scale)[0]}
    if not (h // kvh) & (h // kvh - 1):
        flex = torch.compile(lambda q, k, v, live: _flex(q, k, v, block_mask(live.bool()), scale), dynamic=False)
        runs["flex decoding"] = lambda: flex(q, k, v, live)
    bounds = decoding.bounds_of(live)
    flags = live.to(torch.int8)  # as the engine's step passes it (workers/attention.py)
    runs["triton split-KV"] = lambda: decoding.attend(q, k, v, flags, bounds, scale)
    # As the compiled step runs it: through inductor's code for the op, and replayed from a CUDA graph
    # (inside the Mistral step it took 156 µs a layer against 144 here, session 7).
    compiled = torch.compile(lambda q, k, v, live, bounds: decoding.attend(q, k, v, live, bounds, scale), dynamic=False)
    runs["triton, compiled"] = lambda: compiled(q, k, v, flags, bounds)
    runs["triton, CUDA graph"] = graphed(lambda: decoding.attend(q, k, v, flags, bounds, scale))
    row = {"shape": name, "keys": total, "live": filled, "left_padding": padded, "live_bytes": nbytes}
    for label, fn in runs.items():
        out = fn()
        seconds = timed(fn)
        row[label] = {
            "us": seconds * 1e6,
            "tb_per_s": nbytes / seconds / 1e12,
            "max_diff": float((out.float() - ref).abs().max()),
        }
    return row


def tile_sweep(configs, seconds_for, nbytes: int) -> list[dict]:
    """Each (keys per tile, warps, stages, splits) timed by ``seconds_for(splits)`` with the op's
    module settings set to it (restored after); a configuration that fails is a row with its error."""
    rows = []
    saved = decoding.KEY_TILE, decoding.NUM_WARPS, decoding.NUM_STAGES
    try:
        for tile, warps, stages, splits in configs:
            decoding.KEY_TILE, decoding.NUM_WARPS, decoding.NUM_STAGES = tile, warps, stages
            config = {"tile": tile, "warps": warps, "stages": stages, "splits": splits or "planned"}
            try:
                seconds = seconds_for(splits)
            except Exception as exc:  # out of shared memory is a result here
                rows.append(config | {"error": type(exc).__name__})
                continue
            rows.append(config | {"us": seconds * 1e6, "tb_per_s": nbytes / seconds / 1e12})
    finally:
        decoding.KEY_TILE, decoding.NUM_WARPS, decoding.NUM_STAGES = saved
    return rows


def sweep(name: str, total: int, filled: int) -> list[dict]:
    shape = SHAPES[name]
    q, k, v, live = inputs(shape, total, filled, False)
    bounds = decoding.bounds_of(live)
    nbytes = int(live.sum()) * shape[2] * shape[3] * 4
    live = live.to(torch.int8)
    configs = itertools.product((32, 64, 128), (4, 8), (2, 3, 4), SPLITS)
    return tile_sweep(
        configs, lambda n: timed(lambda: decoding.attend(q, k, v, live, bounds, shape[3] ** -0.5, splits=n)), nbytes
    )


def attention_after(label: str, before, caches: list, live, bounds, scale: float) -> None:
    """The op right after ``before(i)`` in each layer ``i`` (its query, keys, values in ``caches``),
    graphed, against ``before`` alone: what the op costs a layer in those surroundings (µs)."""

    def alone():
        return [before(i) for i in range(len(caches))]

    def both():
        return [(before(i), decoding.attend(q, k, v, live, bounds, scale)) for i, (q, k, v) in enumerate(caches)]

    first, second = (1e6 * per_graphed_call(fn, len(caches)) for fn in (alone, both))
    print(f"  {label} alone {first:.1f} us; with the attention after each {second:.1f} us")
    print(f"  so the attention after {label}: {second - first:.1f} us")


def between_products(x, weights: list, caches: list, live, bounds, scale: float) -> None:
    """The op between weight streams, as in a step: each layer's product ``x @ weights[i].T`` then
    that layer's attention. The BLAS library is the caller's setting."""
    attention_after("products", lambda i: F.linear(x, weights[i]), caches, live, bounds, scale)


def after_cache_writes(caches: list, live, bounds, scale: float, position: int) -> None:
    """The op right after each layer's new key and value are written into its cache at ``position``,
    as the step writes them (``index_copy_``) just before its attention."""
    b, kvh, _, d = caches[0][1].shape
    new = torch.randn(b, kvh, 1, d, dtype=caches[0][1].dtype, device="cuda")
    at = torch.tensor([position], device="cuda")

    def write(i):
        _, k, v = caches[i]
        return k.index_copy_(2, at, new), v.index_copy_(2, at, new)

    attention_after("cache writes", write, caches, live, bounds, scale)


def sustained(fn, calls: int, seconds: float = 6.0, window: float = 0.5) -> None:
    """``fn`` (a graph of ``calls`` attention calls) replayed without a pause for ``seconds``, the time
    per call of each ``window``: a whole generation keeps the memory busy for seconds, the timings
    above for tenths of one (if the memory's sustained rate is lower, the later windows show it)."""
    replay = graphed(fn)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t, n = time.perf_counter(), 0
        start.record()
        while time.perf_counter() - t < window:
            for _ in range(10):
                replay()
            n += 10
            torch.cuda.synchronize()
        stop.record()
        torch.cuda.synchronize()
        print(
            f"  {time.perf_counter() - end + seconds:5.1f} s: {1000 * start.elapsed_time(stop) / (n * calls):6.1f} us"
        )


def cold_sweep(name: str, total: int, filled: int, layers: int, with_sweep: bool = True) -> list[dict]:
    """The sweep as a decoding step meets the op: one cache per layer, the layers' calls replayed
    from one CUDA graph, so no call finds the keys of the one before it in the 50 MB L2. Session 9:
    137 µs this way, 139 over one cache, 156 inside the Mistral step; the rows after the first two
    (between weight products, sustained for seconds) test what the step adds."""
    shape = SHAPES[name]
    caches = [inputs(shape, total, filled, False) for _ in range(layers)]
    live = caches[0][3]
    bounds = decoding.bounds_of(live)
    flags = live.to(torch.int8)
    nbytes = int(live.sum()) * shape[2] * shape[3] * 4
    scale = shape[3] ** -0.5
    # the op as the engine's compiled step runs it: through inductor's launcher, graphed
    compiled = torch.compile(lambda q, k, v, f, b: decoding.attend(q, k, v, f, b, scale), dynamic=False)
    pairs = {
        "eager": lambda: [decoding.attend(q, k, v, flags, bounds, scale) for q, k, v, _ in caches],
        "compiled": lambda: [compiled(q, k, v, flags, bounds) for q, k, v, _ in caches],
    }
    for label, fn in pairs.items():
        seconds = per_graphed_call(fn, layers)
        print(f"planned config, {label}, graphed: {seconds * 1e6:.1f} us {nbytes / seconds / 1e12:.2f} TB/s")
    print("between Mistral-7B's gate/up products (cuBLASLt, one weight per layer):")
    x = torch.randn(shape[0], 4096, dtype=torch.bfloat16, device="cuda")
    weights = [torch.randn(2 * 14336, 4096, dtype=torch.bfloat16, device="cuda") for _ in caches]
    with preferred_blas("cublaslt"):
        between_products(x, weights, [(q, k, v) for q, k, v, _ in caches], flags, bounds, scale)
    del weights
    # session 10: the step runs near the card's 700 W limit, the op alone at ~610 W. Products that
    # keep the tensor cores busy (~0.4 ms each) draw the full limit: if power makes the op slower,
    # it is slower between these.
    print("between compute-bound products (8192 x 4096 @ 4096 x 4096, one weight per layer):")
    x = torch.randn(8192, 4096, dtype=torch.bfloat16, device="cuda")
    weights = [torch.randn(4096, 4096, dtype=torch.bfloat16, device="cuda") for _ in caches]
    between_products(x, weights, [(q, k, v) for q, k, v, _ in caches], flags, bounds, scale)
    del weights, x
    print("right after the step's cache writes (the new key and value at the last live position):")
    after_cache_writes([(q, k, v) for q, k, v, _ in caches], flags, bounds, scale, filled - 1)
    print("the eager graph replayed for 6 s without a pause, µs a call per half second:")
    sustained(pairs["eager"], layers)
    if not with_sweep:
        return []

    def seconds_for(splits):
        def step():
            return [decoding.attend(q, k, v, flags, bounds, scale, splits=splits) for q, k, v, _ in caches]

        return per_graphed_call(step, layers)

    return tile_sweep(itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4), (None, 2)), seconds_for, nbytes)


def over_step_lengths(name: str, total: int, first: int, last: int, layers: int) -> dict:
    """The op at every live length a generation's decoding steps meet, ``first`` to ``last`` (one
    cache per layer, graphed): the step's profile averages the op over all of them, the rows above
    time one. Keys are read in tiles of ``KEY_TILE``, so a length just past a tile boundary costs a
    whole tile more; 768 is a boundary, the best case for its neighbourhood."""
    shape = SHAPES[name]
    caches = [inputs(shape, total, total, False)[:3] for _ in range(layers)]
    scale = shape[3] ** -0.5
    flags = torch.zeros(shape[0], total, dtype=torch.int8, device="cuda")
    flags[:, :first] = 1
    bounds = decoding.bounds_of(flags)
    # one graph, its mask and bounds refilled in place for each length, as the engine's step does
    replay = graphed(lambda: [decoding.attend(q, k, v, flags, bounds, scale) for q, k, v in caches])
    times = {}
    for filled in range(first, last + 1):
        flags[:, :filled] = 1
        bounds.copy_(decoding.bounds_of(flags))
        times[filled] = 1e6 * timed(replay, reps=3) / layers
    mean = sum(times.values()) / len(times)
    middle = (first + last) // 2
    print(f"the op at each live length {first}..{last} (µs a call): mean {mean:.1f}; at {middle}: {times[middle]:.1f}")
    for filled in range(first, last + 1, 16):
        print(f"  {filled:4d} keys: {times[filled]:6.1f}")
    return {"mean_us": mean, "us_by_live_keys": times}


def check_bounds(total: int = 896, prompt: int = 640) -> bool:
    """The op's key bounds computed as the compiled step computes them (inductor, CUDA graphs) against
    eager, at live lengths of a generation's steps, left-padded rows among them. Session 11 found
    the step's ends past the last live key, so it read the whole cache (``decoding.bounds_of``)."""
    ok = True
    for mode in (None, "reduce-overhead"):
        torch._dynamo.reset()
        compiled = torch.compile(lambda m: (m.to(torch.int8), decoding.bounds_of(m)), dynamic=False, mode=mode)
        mask = torch.zeros(128, total, dtype=torch.long, device="cuda")
        torch._dynamo.mark_static_address(mask)  # as the engine keeps its step mask
        for filled in (prompt + 1, prompt + 60, (prompt + total) // 2, total - 1):
            mask.zero_()
            mask[:, :filled] = 1
            mask[::2, :100] = 0  # every other row left-padded
            for _ in range(3):  # the graphed replays too
                bounds = compiled(mask)[1].clone()
            eager = decoding.bounds_of(mask)
            same = bool((bounds == eager).all())
            ok &= same
            print(
                f"  {mode or 'default'} mode, {filled} live: compiled {bounds[:2].tolist()}, "
                f"eager {eager[:2].tolist()}, {'equal' if same else 'DIFFERENT'}"
            )
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--cold", action="store_true", help="only the sweep over one cache per layer (Mistral-7B)")
    ap.add_argument("--no-sweep", action="store_true", help="with --cold: the planned config only")
    ap.add_argument("--lengths", action="store_true", help="the op at each live length of the step (Mistral-7B)")
    ap.add_argument("--bounds", action="store_true", help="check the op's bounds compiled as in the step, then exit")
    args = ap.parse_args()
    if args.bounds:
        print("the decoding attention's key bounds, compiled against eager (row 0 unpadded, row 1 left-padded):")
        raise SystemExit(0 if check_bounds() else 1)
    busy(3.0)
    if args.lengths:  # the study's workload: 640-token prompts, 256 new tokens
        result = over_step_lengths("mistral-7b b128", 896, 641, 895, 32)  # the 255 steps after the prefill
        if args.out:
            meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
            args.out.write_text(json.dumps(meta | result, indent=2))
        return
    if args.cold:
        results = cold_sweep("mistral-7b b128", 896, 768, 32, not args.no_sweep)
        print("triton sweep, mistral-7b b128, one cache per layer, graphed: tile warps stages splits -> us, TB/s")
        for t in sorted(results, key=lambda t: t.get("us", 1e9)):
            speed = f"{t['us']:.1f}  {t['tb_per_s']:.2f}" if "us" in t else t["error"]
            print(f"  {t['tile']:>4} {t['warps']:>2} {t['stages']:>2} {t['splits']:>7}  {speed}")
        if args.out:
            meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
            args.out.write_text(json.dumps(meta | {"cold_sweep": results}, indent=2))
        return
    rows = [case(name, 896, 768, padded) for name in SHAPES for padded in (False, True)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; static cache 896, live to 768")
    kernels = ("sdpa (whole cache)", "flex decoding", "triton split-KV", "triton, compiled", "triton, CUDA graph")
    print(f"{'shape':<20}{'pad':>5}  " + "".join(f"{k:>30}" for k in kernels))
    for r in rows:
        cells = []
        for k in kernels:
            c = r.get(k)
            cells.append(f"{c['us']:>9.1f} us {c['tb_per_s']:>5.2f} TB/s {c['max_diff']:>6.3f}" if c else f"{'-':>30}")
        print(f"{r['shape']:<20}{'yes' if r['left_padding'] else 'no':>5}  " + "".join(f"{c:>30}" for c in cells))
    tuning = {name: sweep(name, 896, 768) for name in ("mistral-7b b128", "smollm2-135m b128")}
    for name, results in tuning.items():
        print(f"\ntriton sweep, {name}: tile warps stages splits -> us")
        for t in sorted(results, key=lambda t: t.get("us", 1e9)):
            speed = f"{t['us']:.1f}" if "us" in t else t["error"]
            print(f"  {t['tile']:>4} {t['warps']:>2} {t['stages']:>2} {t['splits']:>7}  {speed}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        args.out.write_text(json.dumps(meta | {"rows": rows, "sweep": tuning}, indent=2))


if __name__ == "__main__":
    main()
