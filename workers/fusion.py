"""One matrix product for Q, K and V and one for gate and up: a Llama/Mistral model as Phi-3.

At a decoding step every product is thin (one row per sequence), so its cost is reading the
weights, and a narrow product (K and V are 1,024 columns in Mistral-7B) reads them well below the
copy bandwidth. Phi-3 is the Llama architecture with exactly these two products fused
(``qkv_proj``, ``gate_up_proj``), so transformers' own Phi-3 code runs the fused model: the
weights are concatenated, nothing is re-implemented.
"""

from __future__ import annotations

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
    from transformers import Phi3Config

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


def fuse(model):
    """A Phi-3 model with ``model``'s weights, Q/K/V and gate/up concatenated; ``model`` is left
    without parameters (they move, so the peak is one layer's fused copy above the model)."""
    import torch
    from transformers import Phi3ForCausalLM

    refusal = fusion_refusal(model)
    if refusal:
        raise ValueError(f"cannot fuse the projections of {refusal}")
    with torch.device("meta"):
        fused = Phi3ForCausalLM(phi3_config(model.config))
    state = dict(model.state_dict())
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        state[attn + "qkv_proj.weight"] = torch.cat(
            [state.pop(attn + f"{x}_proj.weight") for x in ("q", "k", "v")], dim=0
        )
        state[mlp + "gate_up_proj.weight"] = torch.cat(
            [state.pop(mlp + f"{x}_proj.weight") for x in ("gate", "up")], dim=0
        )
        for name in (attn + "q_proj", attn + "k_proj", attn + "v_proj", mlp + "gate_proj", mlp + "up_proj"):
            module = model.get_submodule(name)
            module.weight = None  # the separate copy is freed once its fused one exists
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
    return fused.eval()
