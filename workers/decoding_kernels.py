"""Triton kernels for one decoding step's attention over a static KV cache (split-KV decoding).

Imported only where the ``triton`` decoding attention is used (:mod:`nerfleet.workers.decoding`).
One program reads one key/value head's live keys once for all of its query heads (grouped-query
attention: the group's queries are the rows of one tile), and only between each row's first and
last live key; the cache's unfilled tail and left padding are never read. When batch × key/value
heads are too few to fill the GPU, the keys are also split across programs and a second kernel
combines the partial softmaxes (flash-decoding).
"""

from __future__ import annotations

import triton
import triton.language as tl

from nerfleet.workers.triton_tiles import attend_tile


@triton.jit
def partial_kernel(
    q,
    k,
    v,
    live,
    bounds,
    out,
    part_acc,
    part_ml,
    scale_log2,
    H,
    KVH,
    GROUPS,
    D,
    CHUNK,
    SPLITS,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_lb,
    stride_ob,
    stride_oh,
    FINAL: tl.constexpr,
    FP32_DOT: tl.constexpr,
    IEEE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    """Online softmax of one key/value head's query group over the live keys of one chunk.

    ``bounds[b] = (first, end)``: keys outside [first, end) are never loaded; inside, ``live``
    masks what is not a key (holes). ``FINAL`` (one chunk) writes the normalised output, else the
    unnormalised accumulator and (max, sum) go to the partial buffers."""
    bh = tl.program_id(0)
    split = tl.program_id(1)
    batch = bh // KVH
    kv_head = bh % KVH
    rows = tl.arange(0, BM)
    dims = tl.arange(0, BD)
    heads = kv_head * GROUPS + rows
    row_ok = rows < GROUPS
    qt = tl.load(
        q + batch * stride_qb + heads[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None] & (dims[None, :] < D),
        other=0.0,
    )
    if FP32_DOT:
        qt = qt.to(tl.float32)
    scale = tl.cast(scale_log2, tl.float32)  # inductor passes Python floats as float64
    first = tl.load(bounds + 2 * batch)
    end = tl.load(bounds + 2 * batch + 1)
    lo = tl.maximum(first, split * CHUNK)
    hi = tl.minimum(end, (split + 1) * CHUNK)
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BD), dtype=tl.float32)
    k_base = k + batch * stride_kb + kv_head * stride_kh
    v_base = v + batch * stride_vb + kv_head * stride_vh
    for n0 in range(lo, hi, BN):
        keys = n0 + tl.arange(0, BN)
        in_range = keys < hi
        is_key = tl.load(live + batch * stride_lb + keys, mask=in_range, other=0) != 0
        load_mask = in_range[:, None] & (dims[None, :] < D)
        kt = tl.load(k_base + keys[:, None] * stride_kn + dims[None, :], mask=load_mask, other=0.0)
        vt = tl.load(v_base + keys[:, None] * stride_vn + dims[None, :], mask=load_mask, other=0.0)
        valid = (in_range & is_key)[None, :]
        m_i, l_i, acc = attend_tile(qt, kt, vt, valid, m_i, l_i, acc, scale, FP32_DOT, IEEE, True, BM, BN, BD)
    out_mask = row_ok[:, None] & (dims[None, :] < D)
    if FINAL:
        acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a row with no key: zeros
        tl.store(
            out + batch * stride_ob + heads[:, None] * stride_oh + dims[None, :],
            acc.to(out.dtype.element_ty),
            mask=out_mask,
        )
    else:
        # partial buffers: (batch * H, SPLITS, BD) and (batch * H, SPLITS, 2)
        slot = (batch * H + heads) * SPLITS + split
        tl.store(part_acc + slot[:, None] * BD + dims[None, :], acc, mask=out_mask)
        tl.store(part_ml + slot * 2, m_i, mask=row_ok)
        tl.store(part_ml + slot * 2 + 1, l_i, mask=row_ok)


@triton.jit
def combine_kernel(
    part_acc,
    part_ml,
    out,
    H,
    D,
    SPLITS,
    stride_ob,
    stride_oh,
    BS: tl.constexpr,
    BD: tl.constexpr,
):
    """One (batch, head): the chunks' partial softmaxes rescaled to their common maximum."""
    bh = tl.program_id(0)
    batch = bh // H
    head = bh % H
    splits = tl.arange(0, BS)
    dims = tl.arange(0, BD)
    ok = splits < SPLITS
    m = tl.load(part_ml + (bh * SPLITS + splits) * 2, mask=ok, other=float("-inf"))
    l_s = tl.load(part_ml + (bh * SPLITS + splits) * 2 + 1, mask=ok, other=0.0)
    m_all = tl.max(m, axis=0)
    m_use = tl.where(m_all == float("-inf"), 0.0, m_all)
    w = tl.where(ok & (m != float("-inf")), tl.exp2(m - m_use), 0.0)
    acc = tl.load(
        part_acc + (bh * SPLITS + splits)[:, None] * BD + dims[None, :],
        mask=ok[:, None] & (dims[None, :] < D),
        other=0.0,
    )
    total = tl.sum(w * l_s, axis=0)
    o = tl.sum(acc * w[:, None], axis=0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out + batch * stride_ob + head * stride_oh + dims, o.to(out.dtype.element_ty), mask=dims < D)
