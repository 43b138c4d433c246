"""Registering an attention function (and its mask builder) with transformers under a name.

The continuous engine (:mod:`nerfleet.workers.continuous`) and the batch-invariant mode
(:mod:`nerfleet.workers.invariant`) each run transformers' own models with an attention of
their own: transformers looks the function up by the model's attention-implementation name.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface


def use(model, name: str, attention, mask) -> None:
    """Register an attention function and its mask builder under ``name`` and switch ``model`` to it."""
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers read it from the config at every forward
        model.config._attn_implementation = name
