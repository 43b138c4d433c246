"""The tile product of nerfleet's Triton kernels (batch-invariant mode, split-KV decoding).

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
