"""The rotary embedding's cos and sin computed once per forward pass in compiled code.

Inductor inlines a cheap pointwise producer into each of its consumers instead of storing it, and
``cos``/``sin`` of position × inverse frequency count as cheap: every layer's query and key rotary
kernels then recompute both for every head and element. For Mistral-7B's prefill of 128 × 640
tokens that is 420 M sine/cosine pairs a layer; the query rotary kernel took 1.46 ms a layer
against ~0.6 ms of memory traffic (``bench/results/profile-h100-mistral-session9.txt``).
Passed through an op inductor cannot see into, they are computed once, stored (in the model's
dtype, as in eager mode) and read by every layer.
"""

from __future__ import annotations

import types

import torch


@torch.library.custom_op("nerfleet::materialized", mutates_args=())
def materialized(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor of its own: opaque to inductor, so what produces it is computed once."""
    return x.clone()


@materialized.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _forward(self, *args, **kwargs):
    out = type(self).forward(self, *args, **kwargs)
    if isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out):
        return materialized(out[0]), materialized(out[1])
    return out  # a rotary module of another shape: left as it is


def materialize_rotary(model) -> int:
    """Wrap the ``forward`` of each rotary embedding module of ``model`` (transformers' classes
    named ``…RotaryEmbedding``, returning ``(cos, sin)``); how many were wrapped."""
    count = 0
    for module in model.modules():
        wrapped = getattr(module.forward, "__func__", None) is _forward
        if type(module).__name__.endswith("RotaryEmbedding") and not wrapped:
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
