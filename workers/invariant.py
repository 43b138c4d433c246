"""Batch-invariant generation: a document gets the same tokens alone or in any batch, in bf16 too.

Greedy decoding in bf16 flips near-ties when the same document is computed inside a different
batch, because the arithmetic changes with the batch: cuBLAS picks its GEMM kernel (tile shape,
split-K) by the matrix shape, torch's reductions pick their thread layout by the number of rows,
and attention kernels tile the keys from position 0, so left padding moves a document's keys
across tile boundaries. With ``NERFLEET_BATCH_INVARIANT=true`` the simple and batched engines
replace exactly those three (Triton kernels in :mod:`nerfleet.workers.invariant_kernels`):

- matrix products (``aten::mm``, ``aten::addmm``): one tile shape for every shape, no split-K;
- means (``aten::mean.dim``, as in RMSNorm): one program per row, the same order for any row count;
- attention: key tiles start at each row's first non-padding key.

Everything else a decoder layer does is element-wise, a gather, or a product with one term
(rotary), which are exact whatever the batch. The price is speed (no cuBLAS, no fused attention):
measured in ``bench/same_answers.py --invariant``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from nerfleet.workers.attention import use
from nerfleet.workers.engine import has_sliding_window, on_cuda
from nerfleet.workers.triton_support import interpreting, kernel_flags, triton_missing

NAME = "nerfleet_invariant"
#: Fixed tile shapes: changing them changes the rounding (identically for every batch).
MATMUL_TILE = (64, 64, 64)
#: The product kernel's warps and pipeline stages (Triton's defaults): they change its speed, not
#: its arithmetic.
MATMUL_WARPS, MATMUL_STAGES = 4, 3
KEY_TILE = 64


def check_available(device: torch.device | str) -> None:
    """A one-line error where the kernels cannot run."""
    missing = triton_missing()
    if missing:
        raise RuntimeError(f"batch-invariant mode {missing}")
    if torch.device(device).type != "cuda" and not interpreting():
        raise RuntimeError(
            f"batch-invariant mode runs Triton kernels on CUDA, not on {device} "
            "(TRITON_INTERPRET=1 runs them on the CPU, slowly: for tests)"
        )


def _kernels():
    # triton: only CUDA builds of torch ship it (the kernels are triton code)
    from nerfleet.workers import invariant_kernels

    return invariant_kernels


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)`` with one fixed tile shape, so each row is computed the same for any M."""
    # triton: only CUDA builds of torch ship it
    import triton

    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise RuntimeError(f"mm: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
    if a.dtype != b.dtype or a.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError(f"batch-invariant mm supports float32/bfloat16/float16 pairs, got {a.dtype}, {b.dtype}")
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.zero_() if bias is None else c.copy_(bias.expand(m, n))
    bm, bn, bk = MATMUL_TILE
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _kernels().matmul_kernel[grid](
        a,
        b,
        c,
        bias if bias is not None else c,
        m,
        n,
        k,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        c.stride(0),
        c.stride(1),
        HAS_BIAS=bias is not None,
        BM=bm,
        BN=bn,
        BK=bk,
        **kernel_flags(a.dtype),
        num_warps=MATMUL_WARPS,
        num_stages=MATMUL_STAGES,
    )
    return c


def _mm(a, b):
    return matmul(a, b)


def _addmm(bias, a, b, *, beta=1, alpha=1):
    if beta == 1 and alpha == 1 and bias.dim() == 1 and bias.dtype == a.dtype:
        return matmul(a, b, bias.contiguous())
    out = matmul(a, b)
    return (out if alpha == 1 else out * alpha) + (bias if beta == 1 else bias * beta)


def mean(x: torch.Tensor, dim=None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x.mean(dim)`` with each output summed by one program in one order, whatever the row count."""
    # triton: only CUDA builds of torch ship it
    import triton

    if dtype is not None:
        x = x.to(dtype)
    if not x.is_floating_point():
        raise RuntimeError(f"mean(): could not infer output dtype for {x.dtype} input; pass dtype")
    dims = sorted({d % x.dim() for d in (dim if dim else range(x.dim()))}) if x.dim() else []
    kept = [d for d in range(x.dim()) if d not in dims]
    n = _numel(x, dims)
    rows = x.permute(*kept, *dims).reshape(-1, max(1, n)).contiguous()
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
    if rows.shape[0] and n:
        block = min(1024, triton.next_power_of_2(n))
        _kernels().row_mean_kernel[(rows.shape[0],)](rows, out, n, rows.stride(0), BLOCK=block)
    elif rows.shape[0]:
        out.fill_(float("nan"))
    shape = [1 if d in dims else s for d, s in enumerate(x.shape)] if keepdim else [x.shape[d] for d in kept]
    return out.to(x.dtype).reshape(shape)


def _numel(x: torch.Tensor, dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= x.shape[d]
    return n


def _mean(x, dim=None, keepdim=False, *, dtype=None):
    return mean(x, dim, keepdim, dtype=dtype)


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, starts: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of ``query`` (batch, heads, Lq, d), the last Lq of the Lk positions of
    ``key``/``value`` (batch, kv heads, Lk, d), over the keys from ``starts[b]`` on (left padding
    before). Returns (batch, Lq, heads, d), the layout transformers' attention functions return."""
    # triton: only CUDA builds of torch ship it
    import triton

    b, h, lq, d = query.shape
    hkv, lk = key.shape[1], key.shape[2]
    if h % hkv:
        raise RuntimeError(f"{h} query heads cannot share {hkv} key/value heads")
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    out = torch.empty((b, lq, h, d), dtype=query.dtype, device=query.device)
    bm = 16 if lq == 1 else 64
    _kernels().attention_kernel[(triton.cdiv(lq, bm), b * h)](
        query,
        key,
        value,
        out,
        starts,
        float(scale),
        lq,
        lk,
        h,
        h // hkv,
        d,
        query.stride(0),
        query.stride(1),
        query.stride(2),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        BM=bm,
        BN=KEY_TILE,
        BD=max(16, triton.next_power_of_2(d)),
        **kernel_flags(query.dtype),
    )
    return out


def first_live(padding: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """Each row's first non-padding key, from a 2-D padding mask that may only pad on the left."""
    if padding is None:
        return torch.zeros(batch, dtype=torch.int32, device=device)
    live = padding.bool()
    starts = (live.cumsum(-1) == 0).sum(-1)
    if bool((live.sum(-1) != live.shape[-1] - starts).any()):
        raise ValueError("batch-invariant attention needs left padding only (a padding mask with holes)")
    return starts.to(torch.int32)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    starts = attention_mask
    if not (isinstance(starts, torch.Tensor) and starts.dim() == 1):
        starts = first_live(None, query.shape[0], query.device)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return attention(query, key, value, starts, scale), None


def _mask(*args, **kwargs):
    """Built once per forward pass and shared by the layers: each row's first live key (None
    without a padding mask: the attention then starts every row at 0 on the queries' device)."""
    padding = kwargs.get("attention_mask")
    return None if padding is None else first_live(padding, padding.shape[0], padding.device)


def by_default(model) -> bool:
    """Whether the mode is on when nothing asks for it: wherever it can run (CUDA with Triton, a
    model without a sliding window), since a document's tokens should not depend on its batch."""
    return on_cuda(model) and triton_missing() is None and not has_sliding_window(model.config)


def install(model) -> None:
    """Switch ``model`` to the batch-invariant attention (registered under ``NAME``)."""
    if has_sliding_window(model.config):
        raise ValueError("batch-invariant attention has no sliding window: this model needs the default mode")
    use(model, NAME, _attention, _mask)


@contextlib.contextmanager
def kernels(device: torch.device | str) -> Iterator[None]:
    """Route ``aten::mm``, ``aten::addmm`` and ``aten::mean.dim`` on ``device`` to the invariant
    kernels for the duration (the process's other work gets the usual kernels back)."""
    check_available(device)
    key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        lib = torch.library.Library("aten", "IMPL")
        lib.impl("aten::mm", _mm, key)
        lib.impl("aten::addmm", _addmm, key)
        lib.impl("aten::mean.dim", _mean, key)
    try:
        yield
    finally:
        lib._destroy()
