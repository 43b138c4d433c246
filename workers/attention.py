"""Grouped-query attention for one decoding step without copying the key/value cache.

transformers' SDPA path repeats K and V to every query head when a mask is present and the step
is being compiled; at batch 128 for Mistral-7B that copies ~60 GB per step. Here each key/value
head's query heads become rows of one query block, so SDPA reads the cache once.
"""

from __future__ import annotations

import torch.nn.functional as F

NAME = "nerfleet_gqa"


def gqa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
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


def _backend():
    """NERFLEET_SDPA_BACKEND=cudnn|efficient|flash|math pins SDPA's kernel (for benchmarking)."""
    import contextlib
    import os

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


def install(model) -> None:
    """Register the function (once) and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, gqa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(NAME)
    else:  # older transformers read it from the config at every forward
        model.config._attn_implementation = NAME
