"""Is a row's result the same alone and inside a batch? torch's kernels against nerfleet's
batch-invariant ones (``nerfleet.workers.invariant``), on a GPU, with the time each takes.

For each operation of a decoder layer that reduces over something (matrix product, RMSNorm's mean,
attention), the same rows are computed once alone and once inside a larger batch (attention: inside
a left-padded batch), and the largest bitwise difference is printed with the time per call.

    python bench/invariance.py [--dtype bfloat16] [--out bench/results/DATE-DEVICE/invariance.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from timing import seconds_per_call  # bench/, the script's folder

from nerfleet.workers import invariant as inv

DEVICE = "cuda"


def timed(fn, repeat: int = 20) -> float:
    """Milliseconds per call (:func:`timing.seconds_per_call`)."""
    if DEVICE != "cuda":  # a dry run of the script (TRITON_INTERPRET=1 on the CPU): no timing
        return float("nan")
    return 1000 * seconds_per_call(fn, reps=repeat)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def matmul_rows(m: int, k: int, n: int, dtype) -> dict:
    x = torch.randn(m, k, dtype=dtype, device=DEVICE)
    w = torch.randn(n, k, dtype=dtype, device=DEVICE) / k**0.5
    torch_full, inv_full = x @ w.t(), inv.matmul(x, w.t())
    torch_one = torch.cat([x[i : i + 1] @ w.t() for i in range(4)])
    inv_one = torch.cat([inv.matmul(x[i : i + 1], w.t()) for i in range(4)])
    return {
        "op": f"mm {m}x{k} @ {k}x{n}",
        "torch_diff": diff(torch_full[:4], torch_one),
        "invariant_diff": diff(inv_full[:4], inv_one),
        "torch_ms": timed(lambda: x @ w.t()),
        "invariant_ms": timed(lambda: inv.matmul(x, w.t())),
    }


def mean_rows(m: int, n: int, dtype) -> dict:
    x = torch.randn(m, n, dtype=dtype, device=DEVICE).float()
    torch_one = torch.cat([x[i : i + 1].pow(2).mean(-1, keepdim=True) for i in range(4)])
    inv_one = torch.cat([inv.mean(x[i : i + 1].pow(2), [-1], True) for i in range(4)])
    return {
        "op": f"mean over {n} of {m} rows (float32, RMSNorm)",
        "torch_diff": diff(x.pow(2).mean(-1, keepdim=True)[:4], torch_one),
        "invariant_diff": diff(inv.mean(x.pow(2), [-1], True)[:4], inv_one),
        "torch_ms": timed(lambda: x.pow(2).mean(-1, keepdim=True)),
        "invariant_ms": timed(lambda: inv.mean(x.pow(2), [-1], True)),
    }


def attention_rows(batch: int, heads: int, kv_heads: int, d: int, width: int, queries: int, dtype) -> dict:
    """Row 0 is the longest; row 1 is ``width // 3`` shorter, left-padded; compared alone."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q = torch.randn(batch, heads, queries, d, dtype=dtype, device=DEVICE, generator=g)
    k = torch.randn(batch, kv_heads, width, d, dtype=dtype, device=DEVICE, generator=g)
    v = torch.randn(batch, kv_heads, width, d, dtype=dtype, device=DEVICE, generator=g)
    pad = width // 3
    starts = torch.zeros(batch, dtype=torch.int32, device=DEVICE)
    starts[1] = pad
    live = torch.arange(width, device=DEVICE)[None, :] >= starts[:, None]
    causal = torch.ones(queries, width, dtype=torch.bool, device=DEVICE).tril(width - queries)
    mask = (live[:, None, :] & causal[None])[:, None]

    def sdpa(qq, kk, vv, mm):
        return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mm, enable_gqa=True).transpose(1, 2)

    keep = slice(pad, None) if queries > 1 else slice(None)  # padding queries have no keys
    alone = (slice(1, 2), slice(None), slice(pad, None))
    torch_one = sdpa(q[alone[0], :, keep], k[alone], v[alone], mask[1:2, :, keep, pad:])
    inv_one = inv.attention(q[1:2, :, keep], k[alone], v[alone], starts[:1] * 0, d**-0.5)
    return {
        "op": f"attention b{batch} {heads}/{kv_heads} heads d{d}, {queries} queries over {width} keys",
        "torch_diff": diff(sdpa(q, k, v, mask)[1:2, keep], torch_one),
        "invariant_diff": diff(inv.attention(q, k, v, starts, d**-0.5)[1:2, keep], inv_one),
        "torch_ms": timed(lambda: sdpa(q, k, v, mask)),
        "invariant_ms": timed(lambda: inv.attention(q, k, v, starts, d**-0.5)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--small", action="store_true", help="small shapes: a quick dry run on the CPU")
    ap.add_argument(
        "--matmul",
        help="the invariant product's BM,BN,BK,warps,stages to try instead of "
        f"{','.join(map(str, (*inv.MATMUL_TILE, inv.MATMUL_WARPS, inv.MATMUL_STAGES)))}",
    )
    args = ap.parse_args()
    if args.matmul:
        *tile, inv.MATMUL_WARPS, inv.MATMUL_STAGES = (int(x) for x in args.matmul.split(","))
        inv.MATMUL_TILE = tuple(tile)
        print(f"invariant product: tile {inv.MATMUL_TILE}, {inv.MATMUL_WARPS} warps, {inv.MATMUL_STAGES} stages")
    global DEVICE
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = (
        [
            matmul_rows(50, 64, 96, dtype),
            mean_rows(50, 96, dtype),
            attention_rows(5, 4, 2, 16, 96, 1, dtype),
            attention_rows(5, 4, 2, 16, 96, 96, dtype),
        ]
        if args.small
        else [
            # SmolLM2-135M: decoding (batch 50) and prefill (50 x 700 positions)
            matmul_rows(50, 576, 1536, dtype),
            matmul_rows(50, 576, 49152, dtype),
            matmul_rows(35_000, 576, 1536, dtype),
            # Mistral-7B: decoding at batch 128
            matmul_rows(128, 4096, 14336, dtype),
            matmul_rows(128, 14336, 4096, dtype),
            mean_rows(50, 576, dtype),
            mean_rows(35_000, 576, dtype),
            attention_rows(50, 9, 3, 64, 768, 1, dtype),
            attention_rows(50, 9, 3, 64, 704, 704, dtype),
            attention_rows(128, 32, 8, 128, 768, 1, dtype),
        ]
    )
    print(f"{'operation':<70} {'torch diff':>11} {'inv. diff':>10} {'torch ms':>9} {'inv. ms':>9}")
    for r in rows:
        print(
            f"{r['op']:<70} {r['torch_diff']:>11.3g} {r['invariant_diff']:>10.3g} "
            f"{r['torch_ms']:>9.3f} {r['invariant_ms']:>9.3f}"
        )
    if args.out:
        name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
        meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__, "dtype": args.dtype}
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
