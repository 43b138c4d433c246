"""Triton kernels whose per-row arithmetic is fixed: one tile shape, one summation order.

Imported only when the batch-invariant mode is on (:mod:`nerfleet.workers.invariant`), because it
needs ``triton``. Under ``TRITON_INTERPRET=1`` they run on the CPU (slowly; for tests); the
interpreter cannot multiply bf16 tiles, so ``FP32_DOT`` widens them to float32 first there, and
tiles are multiplied by :func:`nerfleet.workers.triton_tiles.dot`, in one order for every row.
"""

from __future__ import annotations

import triton
import triton.language as tl

from nerfleet.workers.triton_tiles import attend_tile, dot


@triton.jit
def matmul_kernel(
    a,
    b,
    c,
    bias,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_cm,
    stride_cn,
    HAS_BIAS: tl.constexpr,
    FP32_DOT: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    """One output tile per program, summed over K from 0 upwards: no split-K, and a row's value
    does not depend on M or on which tile holds it."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    cols = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN)
    inner = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + inner
        x = tl.load(
            a + rows[:, None] * stride_am + ks[None, :] * stride_ak,
            mask=(rows[:, None] < M) & (ks[None, :] < K),
            other=0.0,
        )
        y = tl.load(
            b + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
            mask=(ks[:, None] < K) & (cols[None, :] < N),
            other=0.0,
        )
        acc = dot(x, y, acc, FP32_DOT, IEEE)
    if HAS_BIAS:
        acc += tl.load(bias + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(
        c + rows[:, None] * stride_cm + cols[None, :] * stride_cn,
        acc.to(c.dtype.element_ty),
        mask=(rows[:, None] < M) & (cols[None, :] < N),
    )


@triton.jit
def row_mean_kernel(x, out, N, stride_row, BLOCK: tl.constexpr):
    """One program per row; lanes accumulate across chunks, then one tree sum."""
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, N, BLOCK):
        acc += tl.load(x + row * stride_row + start + lanes, mask=start + lanes < N, other=0.0).to(tl.float32)
    tl.store(out + row, tl.sum(acc, axis=0) / N)


@triton.jit
def attention_kernel(
    q,
    k,
    v,
    o,
    starts,
    scale,
    Lq,
    Lk,
    H,
    GROUPS,
    D,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_om,
    stride_oh,
    FP32_DOT: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    """Causal attention, queries being the last ``Lq`` of ``Lk`` positions, with online softmax.

    Key tiles start at the row's first live key (``starts``), not at position 0: a left-padded row
    is tiled exactly as the same row alone, so every tile, maximum and sum is the same. Tiles past
    a query's causal end add exact zeros."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // H
    head = bh % H
    kv_head = head // GROUPS
    start = tl.load(starts + batch)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BD)
    qmask = (offs_m[:, None] < Lq) & (offs_d[None, :] < D)
    qt = tl.load(q + batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :], mask=qmask)
    if FP32_DOT:
        qt = qt.to(tl.float32)
    last = Lk - Lq + offs_m  # each query's own key position: the causal bound
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BD), dtype=tl.float32)
    end = tl.minimum(Lk, Lk - Lq + (pid_m + 1) * BM)
    for n0 in range(start, end, BN):
        offs_n = n0 + tl.arange(0, BN)
        kvmask = (offs_n[:, None] < Lk) & (offs_d[None, :] < D)
        kt = tl.load(
            k + batch * stride_kb + kv_head * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
            mask=kvmask,
            other=0.0,
        )
        vt = tl.load(
            v + batch * stride_vb + kv_head * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
            mask=kvmask,
            other=0.0,
        )
        valid = (offs_n[None, :] <= last[:, None]) & (offs_n[None, :] < Lk)
        m_i, l_i, acc = attend_tile(qt, kt, vt, valid, m_i, l_i, acc, scale, FP32_DOT, IEEE, False, BM, BN, BD)
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a padding query sees no key: zeros
    tl.store(
        o + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
        acc.to(o.dtype.element_ty),
        mask=qmask,
    )
