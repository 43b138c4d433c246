"""Attention for the compiled engine: each live block of the key/value cache is read once.

transformers' SDPA path repeats K and V to every query head when a mask is present and the step
is being compiled; at batch 128 for Mistral-7B that copies ~60 GB per step. Two ways round it for
the decoding step:

- ``sdpa``: each key/value head's query heads become rows of one query block, so SDPA reads the
  cache once, but all of the static cache, filled or not;
- ``flex``: FlexAttention's decoding kernel with a block mask built once per step from the padding
  mask, so cache blocks that hold only padding or not-yet-generated positions are never read;
- ``triton``: nerfleet's split-KV decoding op (:mod:`nerfleet.workers.decoding`): each row's live
  key range only, read once per key/value head, any group size.

The prefill always uses SDPA; a prefill with no padding at all (the engine then passes no mask) runs
causal over the prompt's keys only, which lets SDPA pick its flash kernel instead of the masked
one over the whole static cache. FlexAttention's general kernel (the prefill's, and the decoding
step's when the query heads per key/value head are not a power of two) gave wrong results with
these block masks on an H100 with torch 2.11 (``bench/flex_check.py``,
``bench/results/flex-check-h100.txt``), while its decoding kernel matched SDPA; so only that
kernel is used (:func:`decoding_refusal`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

NAME = "nerfleet_gqa"
#: Cache positions per FlexAttention block; blocks with no live position are skipped.
KV_BLOCK = 128


def gqa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _is_block_mask(attention_mask):
        return _flex(query, key, value, attention_mask, scaling), None
    if isinstance(attention_mask, LiveKeys):
        from nerfleet.workers.decoding import attend

        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return attend(query, key, value, attention_mask.live, attention_mask.bounds, scale), None
    groups = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None and query.shape[2] > 1:  # an unpadded prefill from cache position 0
        n = query.shape[2]
        with _backend():
            out = F.scaled_dot_product_attention(
                query, key[:, :, :n], value[:, :, :n], is_causal=True, scale=scaling, enable_gqa=groups > 1
            )
        return out.transpose(1, 2).contiguous(), None
    if groups > 1 and query.shape[2] == 1 and key.shape[1] * groups == query.shape[1]:
        b, h, _, d = query.shape
        q = query.reshape(b, h // groups, groups, d)
        mask = attention_mask
        if mask is not None:
            mask = mask[:, :, -1:, : key.shape[2]].expand(b, mask.shape[1], groups, key.shape[2])
        with _backend():
            out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
        return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


class LiveKeys(NamedTuple):
    """The ``triton`` decoding step's mask: which cache positions hold keys (batch × keys) and
    each row's range of them (:func:`nerfleet.workers.decoding.bounds_of`)."""

    live: torch.Tensor
    bounds: torch.Tensor


def _is_block_mask(mask) -> bool:
    from torch.nn.attention.flex_attention import BlockMask

    return isinstance(mask, BlockMask)


def block_mask(live: torch.Tensor):
    """A FlexAttention block mask for one decoding step from its (batch × keys) boolean mask.

    A cache block is skipped when no key in it is live, read without the mask when all are (full
    blocks), and masked only when partly live: left padding and the unfilled end of the static
    cache are never read.
    """
    from torch.nn.attention.flex_attention import BlockMask

    b, n = live.shape
    kb = -(-n // KV_BLOCK)
    # Keys padded to whole blocks: the kernel's tiles then never index past the mask. Without
    # padding, the mask is read where it lies (the step's own input), never recomputed inside
    # the kernel (a derived mask made torch 2.11 generate a kernel that did not compile).
    padded = live if kb * KV_BLOCK == n else F.pad(live, (0, kb * KV_BLOCK - n))
    tiles = padded.view(b, 1, kb, KV_BLOCK)
    any_live, all_live = tiles.any(-1), tiles.all(-1)
    partial = any_live & ~all_live

    def listed(which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = which.sum(-1, dtype=torch.int32).view(b, 1, 1)
        order = torch.argsort((~which).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return count, order.view(b, 1, 1, kb)

    def mask_mod(batch, head, q_idx, kv_idx):
        return padded[batch, kv_idx]

    return BlockMask.from_kv_blocks(
        *listed(partial), *listed(all_live), BLOCK_SIZE=KV_BLOCK, mask_mod=mask_mod, seq_lengths=(1, n)
    )


DECODE_KERNELS = ("triton", "flex", "sdpa")


def decoding_refusal(config, kernel: str) -> str | None:
    """Why ``kernel`` cannot run this model's decoding steps, or None when it can."""
    from nerfleet.workers.engine import has_sliding_window, kv_heads_and_dim

    if kernel not in DECODE_KERNELS:
        raise ValueError(f"decode attention must be one of {', '.join(DECODE_KERNELS)}, got {kernel!r}")
    if kernel == "sdpa":
        return None
    if has_sliding_window(config):
        return f"{kernel} decoding masks by the padding mask alone; a model with sliding-window attention"
    if kernel == "triton":
        from nerfleet.workers.triton_support import triton_missing

        missing = triton_missing()
        return f"triton decoding {missing}" if missing else None
    groups = config.num_attention_heads // kv_heads_and_dim(config)[0]
    if groups & (groups - 1):
        return (
            f"with {groups} query heads per key/value head (not a power of two) torch runs its general "
            "flex kernel, which gave wrong results on the GPU (bench/flex_check.py); a model like this"
        )
    return None


def _flex(query, key, value, block_mask, scaling):
    from torch.nn.attention.flex_attention import flex_attention

    out = flex_attention(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous()


def _backend():
    """NERFLEET_SDPA_BACKEND=cudnn|efficient|flash|math pins SDPA's kernel (for benchmarking)."""
    import contextlib

    choice = os.environ.get("NERFLEET_SDPA_BACKEND")
    if not choice:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([names[choice]])


def _sdpa_mask(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _mask_function(decode: str, windowed: bool):
    """The mask builder for a decoding kernel: decoding masks are built once per forward pass and
    shared by all layers; a prefill without a padding mask gets none (causal over the prompt, see
    :func:`gqa_attention`) unless the model has a sliding window, any other one transformers' SDPA mask."""

    def build(*args, **kwargs):
        padding = kwargs.get("attention_mask")
        # queries: q_length in newer transformers, the length of cache_position in 5.17
        positions = kwargs.get("cache_position")
        queries = kwargs.get("q_length") or (len(positions) if positions is not None else 0)
        if padding is None and queries > 1 and not windowed:
            return None
        if queries == 1 and decode != "sdpa" and padding is not None and padding.dim() == 2:
            # The engine's padding mask marks exactly the filled cache positions, so it is the
            # decoding mask's source as it is (the step's input).
            if decode == "triton":
                from nerfleet.workers.decoding import bounds_of

                # one byte a key: the kernel loads a tile's flags beside its keys and values
                return LiveKeys(padding.to(torch.int8), bounds_of(padding))
            return block_mask(padding.bool())
        return _sdpa_mask(*args, **kwargs)

    return build


def install(model, decode: str = "sdpa") -> None:
    """Register the functions (once) and switch ``model`` to them; decoding by ``decode``."""
    refusal = decoding_refusal(model.config, decode)
    if refusal:
        raise ValueError(f"{refusal} needs decode_attention 'sdpa'")
    # no "flex" or "sdpa" in the name: transformers looks for those in it
    suffix = {"sdpa": "", "flex": "_decode_blocks", "triton": "_decode_split"}[decode]
    from nerfleet.workers.engine import has_sliding_window

    use(model, NAME + suffix, gqa_attention, _mask_function(decode, has_sliding_window(model.config)))


def use(model, name: str, attention, mask) -> None:
    """Register an attention function and its mask builder under ``name`` and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers read it from the config at every forward
        model.config._attn_implementation = name
