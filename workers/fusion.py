"""One matrix product for Q, K and V and one for gate and up: a Llama/Mistral model as Phi-3.

At a decoding step every product is thin (one row per sequence), so its cost is reading the
weights, and a narrow product (K and V are 1,024 columns in Mistral-7B) reads them well below the
copy bandwidth. Phi-3 is the Llama architecture with exactly these two products fused
(``qkv_proj``, ``gate_up_proj``), so transformers' own Phi-3 code runs the fused model: the
weights are concatenated, nothing is re-implemented.
"""

from __future__ import annotations

import torch
from transformers import Phi3Config, Phi3ForCausalLM

#: Architectures whose layers are Phi-3's once the projections are concatenated.
FUSABLE = ("LlamaForCausalLM", "MistralForCausalLM")


def fusion_refusal(model) -> str | None:
    """Why ``model`` cannot be fused, or None when it can."""
    config = model.config
    arch = type(model).__name__
    if arch not in FUSABLE:
        return f"{arch} is not one of {', '.join(FUSABLE)}"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return f"{arch} with biased projections"
    if getattr(config, "sliding_window", None):
        return f"{arch} with a sliding window"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"{arch} with activation {config.hidden_act}"
    head_dim = getattr(config, "head_dim", None)
    if head_dim and head_dim != config.hidden_size // config.num_attention_heads:
        return f"{arch} with head_dim {head_dim} other than hidden_size / heads (Phi-3 derives it)"
    return None


def phi3_config(config):
    """The Phi-3 configuration computing what ``config`` (Llama or Mistral) computes."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if not rope:  # older transformers: rope_theta and rope_scaling attributes
        rope = dict(getattr(config, "rope_scaling", None) or {"rope_type": "default"})
        rope["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    rope.setdefault("partial_rotary_factor", 1.0)
    fused = Phi3Config(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        original_max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=getattr(config, "tie_word_embeddings", False),
        rope_parameters=rope,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        sliding_window=None,
    )
    fused._attn_implementation = config._attn_implementation
    return fused


def fuse(model, column_major: bool = False):
    """A Phi-3 model sharing ``model``'s weights: each layer's Q/K/V (and gate/up) weights are
    concatenated into one tensor, and ``model``'s own projections become views of it, so both
    models work and the weights are held once (the peak is one layer's copy above the model).

    ``column_major`` stores every projection's weight transposed in memory (same shape and
    values), so ``F.linear`` hands cuBLAS a non-transposed operand, another family of kernels
    for the thin products of a decoding step; ``model`` shares the re-laid-out weights too."""
    refusal = fusion_refusal(model)
    if refusal:
        raise ValueError(f"cannot fuse the projections of {refusal}")
    with torch.device("meta"):
        fused = Phi3ForCausalLM(phi3_config(model.config))
    state = dict(model.state_dict())
    for i in range(model.config.num_hidden_layers):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv = [attn + "q_proj", attn + "k_proj", attn + "v_proj"]
        state[attn + "qkv_proj.weight"] = _concatenate(model, qkv, column_major)
        state[mlp + "gate_up_proj.weight"] = _concatenate(model, [mlp + "gate_proj", mlp + "up_proj"], column_major)
        for name in ("q", "k", "v"):
            del state[attn + f"{name}_proj.weight"]
        for name in ("gate", "up"):
            del state[mlp + f"{name}_proj.weight"]
    if fused.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = fused.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (m == "lm_head.weight" and fused.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"fusing left weights unmatched: missing {missing}, unexpected {unexpected}")
    if fused.config.tie_word_embeddings:
        fused.tie_weights()
    # rotary frequencies are computed, not loaded: made again where the weights are
    with torch.device(model.device):
        fused.model.rotary_emb = type(fused.model.rotary_emb)(fused.config)
    fused.generation_config = model.generation_config
    if column_major:
        _transpose_storage(fused, model)
    return fused.eval()


def _transposed_in_memory(t):
    """The same shape and values, stored column by column (strides (1, rows))."""
    return t.t().contiguous().t()


def _transpose_storage(fused, model) -> None:
    """The products the fusion did not concatenate (output, down, lm_head), re-laid out one at a
    time, ``model``'s modules given the same new weight so the old one is freed. A weight tied
    to the embeddings stays as it is (gathering rows of a transposed table is slow)."""
    tied = fused.get_input_embeddings().weight
    for name, module in fused.named_modules():
        if not isinstance(module, torch.nn.Linear) or module.weight is tied or not module.weight.is_contiguous():
            continue
        weight = torch.nn.Parameter(_transposed_in_memory(module.weight.detach()), module.weight.requires_grad)
        module.weight = weight
        original = model.get_submodule(name)
        if isinstance(original, torch.nn.Linear) and original.weight.shape == weight.shape:
            original.weight = weight


def _concatenate(model, names: list[str], column_major: bool = False):
    """One tensor of the named linear layers' weights (stacked by output, transposed in memory if
    ``column_major``); each layer's weight becomes a view of its rows, so the separate tensors
    are freed."""
    modules = [model.get_submodule(n) for n in names]
    whole = torch.cat([m.weight.detach() for m in modules], dim=0)
    if column_major:
        whole = _transposed_in_memory(whole)
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(whole[start : start + rows], requires_grad=m.weight.requires_grad)
        start += rows
    return whole
