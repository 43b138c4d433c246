"""The prefill's last decoder layer, after its attention, for the last prompt position only.

A prefill needs every layer's keys and values at every prompt position (they fill the cache) but
logits only at the last position (``logits_to_keep=1``). In the last layer, what follows the
attention — the residual, the post-attention norm and the MLP — feeds nothing but those logits,
so it runs on one position instead of the whole prompt. For Mistral-7B at 128 prompts × 640
tokens that is 1/32 of the prefill's MLP products (29 TFLOP) and their activations.

The layer keeps transformers' own modules; only its ``forward`` is wrapped, and the shortcut is
taken only inside :func:`last_position_only` (other callers of the same model get every
position, as always).
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager

#: Decoder layers made of input norm → attention → residual → post-attention norm → MLP → residual.
LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Phi3DecoderLayer")
_FLAG = "_nerfleet_last_position_only"


def last_position_refusal(model) -> str | None:
    """Why the shortcut cannot serve ``model``, or None when it can."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return f"transformers {transformers.__version__}: its decoder layers return tuples"
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers:
        return f"{type(model).__name__} has no decoder layers at model.layers"
    name = type(layers[-1]).__name__
    if name not in LAYERS:
        return f"{name} is not one of {', '.join(LAYERS)}"
    return None


def _forward(self, hidden_states, *args, **kwargs):
    if args or not getattr(self, _FLAG, False) or hidden_states.shape[1] == 1:
        return type(self).forward(self, hidden_states, *args, **kwargs)
    attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
    # Phi-3's residual dropouts (identity in eval); Llama and Mistral have none
    hidden = hidden_states[:, -1:] + getattr(self, "resid_attn_dropout", _same)(attended[:, -1:])
    return hidden + getattr(self, "resid_mlp_dropout", _same)(self.mlp(self.post_attention_layernorm(hidden)))


def _same(x):
    return x


@contextmanager
def last_position_only(model) -> Iterator[None]:
    """Within it, ``model``'s last layer returns the last position only (its attention still runs,
    and fills the cache, at every position)."""
    refusal = last_position_refusal(model)
    if refusal:
        raise ValueError(f"cannot run the last layer at the last position only: {refusal}")
    layer = model.model.layers[-1]
    if getattr(layer.forward, "__func__", None) is not _forward:
        layer.forward = types.MethodType(_forward, layer)
    setattr(layer, _FLAG, True)
    try:
        yield
    finally:
        setattr(layer, _FLAG, False)
