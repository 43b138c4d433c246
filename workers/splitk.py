"""Split-K for the decoding step's narrow matrix products.

At a decoding batch of 128 rows, Mistral-7B's output product (4,096 → 4,096) reads its weight at
1.7–2.0 TB/s and Q/K/V (4,096 → 6,144) at 2.4, against 2.8 for the wide gate/up product
(``bench/results/decode-products-h100-mistral.txt``): cuBLAS tiles their few output columns over
fewer blocks than the GPU has multiprocessors, each streaming the whole inner dimension. Cutting
the inner dimension into ``splits`` slices makes one batched product of ``splits`` times as many
blocks; the slices' partial sums are kept in float32 and added in the next pointwise kernel, which
inductor fuses with whatever consumes the product (the residual add, the rotary). Only products of
one position per row are split (decided when the code is traced): a decoding step's, not the
prefill's, which are wide enough already.
"""

from __future__ import annotations

import types

import torch


def split_k_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, splits: int) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as ``splits`` products over slices of the inner dimension,
    summed in float32 and rounded once to ``x``'s dtype."""
    k = x.shape[-1]
    if k % splits:
        raise ValueError(f"split-K: inner dimension {k} is not divisible by {splits} splits")
    rows = x.reshape(-1, k)
    # (splits, rows, k / splits) @ (splits, k / splits, out): both views, whichever way W is laid out
    slices = rows.view(rows.shape[0], splits, k // splits).transpose(0, 1)
    weights = weight.t().view(splits, k // splits, weight.shape[0])
    if x.is_cuda:
        partial = torch.bmm(slices, weights, out_dtype=torch.float32)
    else:  # no reduced-precision bmm with a float32 result on the CPU
        partial = torch.bmm(slices.float(), weights.float())
    out = partial.sum(0)
    if bias is not None:
        out = out + bias
    return out.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


def _forward(self, x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 3 or x.shape[-2] != 1:  # (batch, positions, features): a prefill's
        return type(self).forward(self, x)
    return split_k_linear(x, self.weight, self.bias, self._split_k)


def split_k(model, splits: dict[str, int]) -> int:
    """Split the inner dimension of each ``nn.Linear`` of ``model`` whose name ends with a key of
    ``splits`` (``{"o_proj": 2}``) that many ways, for inputs of one position per row; how many
    modules it wrapped. A module wrapped before takes the new setting."""
    count = 0
    for name, module in model.named_modules():
        ways = next((n for suffix, n in splits.items() if name.endswith(suffix)), None)
        if not isinstance(module, torch.nn.Linear) or not ways or ways < 2:
            continue
        if module.in_features % ways:
            raise ValueError(f"split-K: {name} has {module.in_features} inputs, not divisible by {ways}")
        module._split_k = ways
        if getattr(module.forward, "__func__", None) is not _forward:
            module.forward = types.MethodType(_forward, module)
        count += 1
    return count
