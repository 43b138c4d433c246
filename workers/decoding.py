"""Split-KV decoding attention: one decoding step over a static cache, reading only live keys.

FlexAttention's decoding kernel applied only to power-of-two query groups without a sliding window,
and its per-block mask bookkeeping cost time at every layer; SDPA reads the whole static cache
(both measured and retired, bench/NOTES.md). This op reads each row's live key range once per key/value head for
all the heads of its group, any group size, and is a ``torch.library.triton_op``, so the continuous
engine's compiled step keeps it inside its CUDA graph. The kernels are in :mod:`nerfleet.workers.decoding_kernels`.
"""

from __future__ import annotations

import torch

from nerfleet.workers.engine import round_up
from nerfleet.workers.triton_support import kernel_flags

#: Keys per tile; also the granularity of a split. With the warps and pipeline stages below,
#: chosen on an H100 by the kernel sweep of session 10 (bench/NOTES.md; its script is retired).
KEY_TILE = 64
NUM_WARPS = 4
NUM_STAGES = 2
#: Programs per streaming multiprocessor to aim for before splitting the keys of a row.
WAVES = 2


def bounds_of(live: torch.Tensor) -> torch.Tensor:
    """Each row's (first live key, one past the last live key), int32 (batch × 2): the only range
    the kernel reads. A row with no live key gets (0, 0).

    Minimum and maximum of the live positions, not ``argmax``: compiled by inductor on CUDA (torch
    2.11), ``argmax`` over the flipped mask gave ends past the last live key (897 for 641 live keys
    of 896, 1,024 for 768; pytorch/pytorch#174069 is the boolean case), so every step read the
    whole cache: 156 µs a layer against 138 (bench/NOTES.md, session 11)."""
    n = live.shape[-1]
    live = live.bool()
    positions = torch.arange(n, device=live.device, dtype=torch.int32)
    end = torch.where(live, positions + 1, 0).amax(-1)
    first = torch.where(live, positions, n).amin(-1)
    return torch.stack([torch.where(end > 0, first, 0), end], -1).to(torch.int32)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":  # torch keeps the properties: no cache here (dynamo traces this)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).multi_processor_count
    return 4  # Triton's interpreter runs programs one by one: splitting only costs time there


def plan_splits(programs: int, keys: int, sms: int) -> int:
    """Chunks per row: one while batch × key/value heads alone fill the GPU ``WAVES`` times over,
    else enough to, never more than there are key tiles."""
    if programs >= WAVES * sms:
        return 1
    return max(1, min(-(-WAVES * sms // programs), -(-keys // KEY_TILE)))


@torch.library.triton_op("nerfleet::decode_attention", mutates_args=())
def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    live: torch.Tensor,
    bounds: torch.Tensor,
    scale: float,
    splits: int,
) -> torch.Tensor:
    """Attention of one query per row, ``query`` (batch, heads, 1, d), over ``key``/``value``
    (batch, kv heads, keys, d) where ``live`` (batch × keys) is non-zero, between ``bounds``.
    Returns (batch, 1, heads, d), the layout transformers' attention functions return."""
    # triton: only CUDA builds of torch ship it
    import triton
    from torch.library import wrap_triton

    from nerfleet.workers import decoding_kernels

    b, h, _, d = query.shape
    kvh, n = key.shape[1], key.shape[2]
    groups = h // kvh
    out = torch.empty((b, 1, h, d), dtype=query.dtype, device=query.device)
    block_d = max(16, triton.next_power_of_2(d))
    chunk = round_up(triton.cdiv(n, splits), KEY_TILE)
    final = splits == 1
    part_acc = torch.empty((1 if final else b * h * splits * block_d,), dtype=torch.float32, device=query.device)
    part_ml = torch.empty((1 if final else b * h * splits * 2,), dtype=torch.float32, device=query.device)
    wrap_triton(decoding_kernels.partial_kernel)[(b * kvh, splits)](
        query,
        key,
        value,
        live,
        bounds,
        out,
        part_acc,
        part_ml,
        scale * 1.4426950408889634,  # log2(e): the kernel uses exp2
        h,
        kvh,
        groups,
        d,
        chunk,
        splits,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        live.stride(0),
        out.stride(0),
        out.stride(2),
        FINAL=final,
        **kernel_flags(query.dtype),
        BM=max(16, triton.next_power_of_2(groups)),
        BN=KEY_TILE,
        BD=block_d,
        num_warps=NUM_WARPS,
        num_stages=NUM_STAGES,
    )
    if not final:
        wrap_triton(decoding_kernels.combine_kernel)[(b * h,)](
            part_acc,
            part_ml,
            out,
            h,
            d,
            splits,
            out.stride(0),
            out.stride(2),
            BS=max(2, triton.next_power_of_2(splits)),
            BD=block_d,
        )
    return out


def attend(query, key, value, live: torch.Tensor, bounds: torch.Tensor, scale: float, splits: int | None = None):
    """:func:`decode_attention` with the split count planned for the device (or as given)."""
    if query.shape[2] != 1:
        raise ValueError(f"split-KV decoding takes one query per row, got {query.shape[2]}")
    if query.shape[1] % key.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads cannot share {key.shape[1]} key/value heads")
    query, key, value, live = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value, live))
    if splits is None:
        splits = plan_splits(query.shape[0] * key.shape[1], key.shape[2], _sm_count(query.device))
    return decode_attention(query, key, value, live, bounds, float(scale), int(splits))
