"""The tile arithmetic of nerfleet's Triton kernels (batch-invariant mode, split-KV decoding): the
tile product and one key tile of an online softmax.

Under ``TRITON_INTERPRET=1`` (``FP32_DOT``, see :func:`nerfleet.workers.triton_support.kernel_flags`)
the interpreter's ``tl.dot`` is numpy's matmul, whose OpenBLAS rounds a row differently by its
position in the tile, and it cannot multiply bf16: there the product is a sum of products in
float32, one fixed summation order per output. On the GPU it is ``tl.dot``, in full float32 for
float32 models (``IEEE``; its default there is TF32).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(x, y, acc, FP32_DOT: tl.constexpr, IEEE: tl.constexpr):
    """``acc + x @ y`` in an order that is the same for every row of ``x``."""
    if FP32_DOT:
        return acc + tl.sum(x.to(tl.float32)[:, :, None] * y.to(tl.float32)[None, :, :], axis=1)
    elif IEEE:
        return tl.dot(x, y, acc, input_precision="ieee")
    else:
        return tl.dot(x, y, acc)


@triton.jit
def attend_tile(
    qt,
    kt,
    vt,
    valid,
    m_i,
    l_i,
    acc,
    scale,
    FP32_DOT: tl.constexpr,
    IEEE: tl.constexpr,
    EXP2: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
):
    """One key tile of an online softmax: the running maximum ``m_i``, sum ``l_i`` and output
    ``acc`` of the queries ``qt`` after the keys ``kt`` (scores outside ``valid`` are -inf) and
    values ``vt``. ``EXP2``: ``scale`` already holds log2(e), and exp2 replaces exp."""
    if FP32_DOT:
        kt = kt.to(tl.float32)
        vt = vt.to(tl.float32)
    s = dot(qt, tl.trans(kt), tl.zeros((BM, BN), dtype=tl.float32), FP32_DOT, IEEE) * scale
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
    if EXP2:
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
    else:
        p = tl.exp(s - m_use[:, None])
        alpha = tl.exp(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(p.to(vt.dtype), vt, tl.zeros((BM, BD), dtype=tl.float32), FP32_DOT, IEEE)
    return m_new, l_i, acc
