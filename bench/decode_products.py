"""The decoding step's matrix products alone, at the batch the compiled engine decodes, each way
torch can run them: cuBLAS on the weight as ``nn.Linear`` stores it (what the step runs now), on
the weight stored transposed, both through cuBLASLt, and inductor's autotuned choice (Triton
templates timed against cuBLAS, ``max_autotune_gemm``, the gemm half of ``mode="max-autotune"``
without its coordinate-descent tuning). Each product cycles over one weight per layer, as a step
does, so the 50 MB L2 never holds them. Prints µs and TB/s per product and what a step would save.

    python bench/decode_products.py --arch mistral-7b --batch 128
    python bench/decode_products.py --arch mistral-7b --batch 81920 --reps 2 --no-inductor   # the prefill's
    python bench/decode_products.py --arch mistral-7b --split-k-only   # split-K against one product, graphed
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from generation import ARCHS  # noqa: E402


def products(kwargs: dict) -> dict[str, tuple[int, int, int]]:
    """(in, out, calls per step) of the fused model's products (:mod:`nerfleet.workers.fusion`)."""
    hidden, inter, layers = kwargs["hidden_size"], kwargs["intermediate_size"], kwargs["num_hidden_layers"]
    heads, kv = kwargs["num_attention_heads"], kwargs["num_key_value_heads"]
    head_dim = hidden // heads
    return {
        "qkv": (hidden, (heads + 2 * kv) * head_dim, layers),
        "o": (heads * head_dim, hidden, layers),
        "gate_up": (hidden, 2 * inter, layers),
        "down": (inter, hidden, layers),
        "lm_head": (hidden, kwargs["vocab_size"], 1),
    }


def per_call_us(fn: Callable, x: torch.Tensor, weights: list[torch.Tensor], reps: int) -> float:
    for w in weights[:3]:
        fn(x, w)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        for w in weights:
            fn(x, w)
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / (reps * len(weights))


def layer_weights(n: int, k: int, copies: int) -> list[torch.Tensor]:
    """``copies`` random (n, k) bf16 weights on the GPU, one per layer cycled: L2 never holds them."""
    return [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / k**0.5 for _ in range(copies)]


def linear(x, w):
    return F.linear(x, w)


def product(x, wt):
    return x @ wt


def split_k_linear(x: torch.Tensor, weight: torch.Tensor, ways: int) -> torch.Tensor:
    """``F.linear(x, weight)`` as one batched product over ``ways`` slices of the inner dimension
    (``ways`` times the thread blocks), float32 partials summed and rounded once."""
    k = x.shape[-1]
    slices = x.reshape(-1, k).view(-1, ways, k // ways).transpose(0, 1)
    partial = torch.bmm(slices, weight.t().view(ways, k // ways, weight.shape[0]), out_dtype=torch.float32)
    return partial.sum(0).to(x.dtype)


def split_k_table(kwargs: dict, batch: int, splits=(2, 4, 8)) -> None:
    """Each of the step's narrow products as the step runs it (cuBLASLt, weight stored transposed)
    against split-K (:func:`split_k_linear`), all replayed from CUDA graphs over one weight per
    layer. The split-K times include the partials' sum as a kernel of its own, which a compiled
    step would fuse into the product's consumer: an upper bound. Session 10 on an H100: split-K was
    slower for every product and every split (``results/split-k-products-h100.txt``)."""
    from decode_attention import per_graphed_call

    def graphed_us(fn, x, weights) -> float:
        return 1e6 * per_graphed_call(lambda: [fn(x, w) for w in weights], len(weights))

    best: dict[str, int] = {}
    torch.backends.cuda.preferred_blas_library("cublaslt")
    print("\nsplit-K, graphed, cuBLASLt, W stored transposed (ways: µs a call, TB/s of the weight)", flush=True)
    for name, (k, n, calls) in products(kwargs).items():
        if name in ("gate_up", "lm_head"):
            continue
        x = torch.randn(batch, k, dtype=torch.bfloat16, device="cuda")
        weights = [w.t().contiguous().t() for w in layer_weights(n, k, min(calls, 16))]  # stored transposed
        ref = F.linear(x, weights[0]).float()
        one = graphed_us(F.linear, x, weights)
        cells, fastest = [f"1: {one:6.1f} µs {n * k * 2 / one / 1e6:4.2f}"], (one, 1)
        for ways in splits:
            fn = functools.partial(split_k_linear, ways=ways)
            err = (fn(x, weights[0]).float() - ref).abs().max().item()
            us = graphed_us(fn, x, weights)
            cells.append(f"{ways}: {us:6.1f} µs {n * k * 2 / us / 1e6:4.2f} (max diff {err:.2g})")
            fastest = min(fastest, (us, ways))
        if fastest[0] < 0.97 * one:  # a clear gain, even with the sum as a kernel of its own
            best[name] = fastest[1]
        print(f"  {name:>5} {batch}x{k}@{n}  " + "  |  ".join(cells), flush=True)
        weights.clear()
        torch.cuda.empty_cache()
    torch.backends.cuda.preferred_blas_library("cublas")
    print("split-K faster by 3% or more: " + (", ".join(f"{n} {w} ways" for n, w in best.items()) or "none"))


def autotuned(options: dict) -> Callable:
    """A fresh compiled product per options (dynamo's cache is per code object and guards)."""
    torch._dynamo.reset()
    return torch.compile(lambda x, w: F.linear(x, w), dynamic=False, options=options)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="mistral-7b", choices=sorted(ARCHS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tma", action="store_true", help="also inductor with persistent TMA templates")
    ap.add_argument("--no-inductor", action="store_true", help="cuBLAS and cuBLASLt only (prefill-sized batches)")
    ap.add_argument("--split-k-only", action="store_true", help="only the split-K table (split_k_linear)")
    args = ap.parse_args()
    _, kwargs, _ = ARCHS[args.arch]
    dt = torch.bfloat16
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.arch}, batch {args.batch}", flush=True)
    if args.split_k_only:
        return split_k_table(kwargs, args.batch)
    variants: dict[str, tuple[str, Callable]] = {
        "cuBLAS, W (nn.Linear)": ("W", linear),
        "cuBLAS, W stored transposed": ("WT", product),
        "cuBLASLt, W": ("W", linear),
        "cuBLASLt, W stored transposed": ("WT", product),
        "inductor max_autotune_gemm, W": ("W", None),
    }
    if args.no_inductor:
        del variants["inductor max_autotune_gemm, W"]
    elif args.tma:
        variants["inductor max_autotune_gemm + persistent TMA, W"] = ("W", None)
    table: dict[str, dict[str, float]] = {}
    for name, (k, n, calls) in products(kwargs).items():
        copies = min(calls, 16)
        x = torch.randn(args.batch, k, dtype=dt, device="cuda")
        weights = layer_weights(n, k, copies)
        nbytes = weights[0].numel() * 2 + x.numel() * 2 + args.batch * n * 2
        row = table.setdefault(name, {})
        for label, (layout, fn) in variants.items():
            ws = weights if layout == "W" else [w.t().contiguous() for w in weights]
            lib = "cublaslt" if "cuBLASLt" in label else "cublas"
            torch.backends.cuda.preferred_blas_library(lib)
            if fn is None:
                options = {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"}
                if "TMA" in label:
                    options["triton.enable_persistent_tma_matmul"] = True
                fn = autotuned(options)
            us = per_call_us(fn, x, ws, args.reps)
            row[label] = us
            print(
                f"{name:>8} {args.batch}x{k}@{n} x{calls}: {label:<48} {us:8.1f} µs  {nbytes / us / 1e6:5.2f} TB/s "
                f"{2 * args.batch * k * n / us / 1e6:6.0f} TFLOP/s",
                flush=True,
            )
            del ws
        torch.backends.cuda.preferred_blas_library("cublas")
        del weights
        torch.cuda.empty_cache()
    calls = {p: c for p, (_, _, c) in products(kwargs).items()}

    def per_step_ms(us: dict[str, float]) -> float:
        return sum(us[p] * calls[p] for p in us) / 1000

    print("\nper decoding step (ms), summed over the layers:")
    for label in variants:
        print(f"  {label:<48} {per_step_ms({p: row[label] for p, row in table.items()}):6.2f} ms")
    best = per_step_ms({p: min(row.values()) for p, row in table.items()})
    now = per_step_ms({p: row["cuBLAS, W (nn.Linear)"] for p, row in table.items()})
    print(f"  {'best per product':<48} {best:6.2f} ms (saves {now - best:.2f} ms a step against nn.Linear's layout)")
    for p, row in table.items():
        print(f"  {p}: fastest {min(row, key=row.get)}")


if __name__ == "__main__":
    main()
