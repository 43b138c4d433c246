"""Engines on the tiny random model: batched equals simple in float32; long documents are cut and recorded."""

import pytest
import torch

from nerfleet.evaluation.prompts import load_prompt
from nerfleet.workers.engine import BatchedEngine, GenerationRequest, SimpleEngine, left_padded, prompt_mask
from nerfleet.workers.models import load, resolve
from tests.conftest import DEMO_CORPUS


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return load(resolve(str(tiny_models["tiny-a"])), device="cpu", dtype="float32")


def requests(n=6, max_new_tokens=12):
    texts = sorted((DEMO_CORPUS / "distemist" / "txt").glob("*.txt"))[:n]
    return [
        GenerationRequest(f"k{i}", load_prompt(("v1", "v2", "v3")[i % 3]).template, p.read_text(), max_new_tokens)
        for i, p in enumerate(texts)
    ]


def test_batched_equals_simple_in_float32(tiny):
    model, tok = tiny
    reqs = requests()
    simple = SimpleEngine(model, tok).generate(reqs)
    batched = BatchedEngine(model, tok, batch_size=4).generate(reqs)
    assert [r.key for r in batched] == [r.key for r in reqs]  # original order restored
    assert [r.output for r in batched] == [r.output for r in simple]
    assert [r.output_tokens for r in batched] == [r.output_tokens for r in simple]
    assert all(r.output_tokens > 0 for r in simple)


def test_long_document_is_truncated_and_recorded(tiny):
    model, tok = tiny
    engine = SimpleEngine(model, tok, context=300)
    req = GenerationRequest("long", load_prompt("v1").template, "fever and cough. " * 400, 8)
    (res,) = engine.generate([req])
    assert res.truncated and res.prompt_tokens <= 300 - 8
    (short,) = engine.generate(requests(1, 8))
    assert not short.truncated


def test_chat_template_is_used_when_present(tiny):
    model, tok = tiny
    ids, _ = SimpleEngine(model, tok).encode(requests(1)[0])
    assert tok.decode(ids).startswith("<s>user:")
    raw, _ = SimpleEngine(model, tok, chat=False).encode(requests(1)[0])
    assert not tok.decode(raw).startswith("<s>user:")


def test_a_batch_is_tokenized_at_once_as_each_prompt_alone(tiny):
    """One tokenizer call for the batch gives each prompt's own ids (chat template or not), and a
    document too long for the context is still cut and marked."""
    from nerfleet.evaluation.prompts import SLOT

    model, tok = tiny
    reqs = [*requests(6), GenerationRequest("long", load_prompt("v1").template, "fever and cough. " * 400, 8)]
    for chat in (True, False):
        engine = SimpleEngine(model, tok, chat=chat, context=1024)
        together = engine.encode_all(reqs)
        for req, (ids, truncated) in zip(reqs, together):
            prompt = req.template.replace(SLOT, req.text)
            alone = (
                tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
                if chat
                else tok(prompt)
            )["input_ids"]
            assert truncated == (req.key == "long")
            assert ids == (list(alone) if not truncated else ids) and len(ids) <= 1024 - req.max_new_tokens
        assert together[-1][0] == engine.encode(reqs[-1])[0]


def test_unknown_model_is_a_clear_error():
    with pytest.raises(LookupError, match="unknown model 'no-such-model'"):
        resolve("no-such-model")


@pytest.mark.parametrize("decode", ["sdpa", "flex", "triton"])
def test_compiled_engine_equals_simple_in_float32(tiny, decode, monkeypatch):
    """The static-cache decode loop (GQA attention, bucketed padding) gives the reference's tokens."""
    from nerfleet.workers import attention, decoding
    from nerfleet.workers.engine import CompiledEngine, kv_bytes_per_token

    built = []  # every decoding mask built: proves which kernel the decoding steps used
    real_blocks, real_bounds = attention.block_mask, decoding.bounds_of
    monkeypatch.setattr(attention, "block_mask", lambda live: built.append("flex") or real_blocks(live))
    monkeypatch.setattr(decoding, "bounds_of", lambda live: built.append("triton") or real_bounds(live))
    model, tok = tiny
    # Triton's interpreter runs the triton kernel program by program: fewer documents there
    reqs = requests(n=3 if decode == "triton" else 6, max_new_tokens=20)
    simple = SimpleEngine(model, tok).generate(reqs)
    engine = CompiledEngine(model, tok, batch_size=4, decode_attention=decode)
    compiled = engine.generate(reqs)
    assert set(built) == ({decode} - {"sdpa"})
    assert [r.output for r in compiled] == [r.output for r in simple]
    if decode == "triton":  # the cache reuse below does not depend on the kernel
        model.config._attn_implementation = "sdpa"
        return
    # The static cache is kept for the next batch of the same shape and reset, never mixed up.
    again = engine.generate(reqs)
    other = engine.generate(reqs[:2])
    model.config._attn_implementation = "sdpa"  # leave the shared fixture as it was
    assert [r.output for r in again] == [r.output for r in simple]
    assert [r.output for r in other] == [r.output for r in simple[:2]]
    # fit_batch counts the kept cache and the kept step mask (int64) as memory the next batch may use
    (n, total), _ = engine._cache
    mask_bytes = n * total * 8 if engine.static_step_mask else 0
    assert engine._reusable_bytes() == kv_bytes_per_token(model.config, model.dtype) * n * total + mask_bytes


def test_unpadded_prefill_runs_causal_without_a_mask(tiny, monkeypatch):
    """Prompts that fill the bucket exactly: the prefill passes no mask, its attention runs causal
    over the prompt's keys only (SDPA's flash kernel on a GPU), and the tokens stay the reference's."""
    import torch

    from nerfleet.workers import attention
    from nerfleet.workers.engine import CompiledEngine

    model, tok = tiny
    torch.manual_seed(3)
    prompts = torch.randint(5, model.config.vocab_size, (3, CompiledEngine.bucket)).tolist()
    reference = SimpleEngine(model, tok)._run(prompts, 10)
    prefill_masks = []
    real = attention.gqa_attention

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        if query.shape[2] > 1:
            prefill_masks.append(attention_mask)
        return real(module, query, key, value, attention_mask, *args, **kwargs)

    monkeypatch.setattr(attention, "gqa_attention", spy)
    try:
        engine = CompiledEngine(model, tok, batch_size=4)
        assert engine._run(prompts, 10) == reference
        assert prefill_masks and all(m is None for m in prefill_masks)
        prefill_masks.clear()
        ragged = [prompts[0][:-1], *prompts[1:]]  # one token short: padded, so masked
        assert engine._run(ragged, 10) == SimpleEngine(model, tok)._run(ragged, 10)
        assert prefill_masks and all(m is not None for m in prefill_masks)
    finally:
        model.config._attn_implementation = "sdpa"


def test_gqa_attention_matches_repeated_kv():
    import torch
    import torch.nn.functional as F

    from nerfleet.workers.attention import gqa_attention

    torch.manual_seed(0)
    b, h, kvh, length, d = 3, 8, 2, 17, 16
    q = torch.randn(b, h, 1, d, dtype=torch.float64)
    k, v = torch.randn(b, kvh, length, d, dtype=torch.float64), torch.randn(b, kvh, length, d, dtype=torch.float64)
    mask = torch.rand(b, 1, 1, length) > 0.3
    mask[..., 0] = True
    module = type("M", (), {"num_key_value_groups": h // kvh})()
    ours, _ = gqa_attention(module, q, k, v, mask, scaling=d**-0.5)
    ref = F.scaled_dot_product_attention(
        q, k.repeat_interleave(h // kvh, 1), v.repeat_interleave(h // kvh, 1), attn_mask=mask, scale=d**-0.5
    ).transpose(1, 2)
    assert torch.allclose(ours, ref, atol=1e-12)


def test_flex_decode_attention_skips_dead_blocks_and_matches_sdpa():
    """The block mask lists exactly the cache blocks with a live key, and attention over it equals
    SDPA with the dense mask (left padding, unfilled tail, a whole dead block)."""
    import torch
    import torch.nn.functional as F

    from nerfleet.workers.attention import KV_BLOCK, block_mask, gqa_attention

    torch.manual_seed(0)
    b, h, kvh, d = 3, 8, 2, 16
    length = 3 * KV_BLOCK + 5  # four blocks, the last one partial
    live = torch.zeros(b, length, dtype=torch.bool)
    live[0, 10 : 2 * KV_BLOCK + 3] = True  # left padding, then the tail not yet generated
    live[1, :] = True
    live[2, KV_BLOCK + 1 : KV_BLOCK + 2] = True  # a single live key
    blocks = block_mask(live)
    # partly live blocks are masked, wholly live ones are not, dead ones are not listed
    assert blocks.kv_num_blocks.flatten().tolist() == [2, 1, 1]
    assert blocks.full_kv_num_blocks.flatten().tolist() == [1, 3, 0]
    assert blocks.kv_indices[2, 0, 0, 0].item() == 1 and blocks.full_kv_indices[0, 0, 0, 0].item() == 1
    q = torch.randn(b, h, 1, d)
    k, v = torch.randn(b, kvh, length, d), torch.randn(b, kvh, length, d)
    module = type("M", (), {"num_key_value_groups": h // kvh})()
    ours, _ = gqa_attention(module, q, k, v, blocks, scaling=d**-0.5)
    ref = F.scaled_dot_product_attention(
        q,
        k.repeat_interleave(h // kvh, 1),
        v.repeat_interleave(h // kvh, 1),
        attn_mask=live[:, None, None],
        scale=d**-0.5,
    ).transpose(1, 2)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-5)


def test_attention_kernels_come_from_settings_and_bad_values_are_refused(tiny, monkeypatch):
    import pydantic

    from nerfleet.settings import get_settings
    from nerfleet.workers.engine import CompiledEngine

    model, tok = tiny
    monkeypatch.setenv("NERFLEET_DECODE_ATTENTION", "flex")
    get_settings.cache_clear()
    try:
        engine = CompiledEngine(model, tok)
        assert engine.decode_attention == "flex"  # asked for; sdpa is the CPU default
        monkeypatch.setenv("NERFLEET_DECODE_ATTENTION", "paged")
        get_settings.cache_clear()
        with pytest.raises(pydantic.ValidationError, match="decode_attention"):
            CompiledEngine(model, tok)
    finally:
        model.config._attn_implementation = "sdpa"
        monkeypatch.undo()
        get_settings.cache_clear()


def test_decoding_kernels_are_refused_where_they_do_not_apply():
    """Sliding windows (the decoding masks follow the padding mask only) for flex and triton; for
    flex also query-head groups that are not a power of two (torch then runs its general kernel,
    measured wrong on the GPU)."""
    from transformers import LlamaConfig

    from nerfleet.workers.attention import decoding_refusal

    def config(heads, kv_heads, **extra):
        return LlamaConfig(num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=64 * heads, **extra)

    assert decoding_refusal(config(32, 8), "flex") is None  # Mistral-7B, Llama-3
    assert decoding_refusal(config(32, 32), "flex") is None  # Llama-2-7B
    assert "power of two" in decoding_refusal(config(9, 3), "flex")  # SmolLM2-135M
    assert decoding_refusal(config(9, 3), "triton") is None
    windowed = config(32, 8, sliding_window=4096)
    assert "sliding-window" in decoding_refusal(windowed, "flex")
    assert "sliding-window" in decoding_refusal(windowed, "triton")
    assert decoding_refusal(windowed, "sdpa") is None
    with pytest.raises(ValueError, match="one of triton, flex, sdpa, got 'paged'"):
        decoding_refusal(windowed, "paged")


def test_the_default_decoding_kernel_is_the_first_that_serves_the_model():
    """On CUDA: triton for any group size, sdpa for a sliding window; sdpa off the GPU."""
    from types import SimpleNamespace

    from transformers import MistralConfig

    from nerfleet.workers.engine import default_decode_attention

    def model(device, **extra):
        config = MistralConfig(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, **extra)
        return SimpleNamespace(device=device, config=config)

    assert default_decode_attention(model("cuda:0", sliding_window=None)) == "triton"
    assert default_decode_attention(model("cuda:0", sliding_window=4096)) == "sdpa"
    assert default_decode_attention(model("cpu", sliding_window=None)) == "sdpa"


def test_decoding_kernels_are_refused_for_sliding_window_models(tiny):
    """Its block mask follows the padding mask only, so a windowed model would attend too far."""
    from nerfleet.workers.engine import CompiledEngine, has_sliding_window

    model, tok = tiny
    assert not has_sliding_window(model.config)
    model.config.sliding_window = 64
    try:
        assert has_sliding_window(model.config)
        assert CompiledEngine(model, tok).decode_attention == "sdpa"
        for kernel in ("flex", "triton"):
            with pytest.raises(ValueError, match="sliding-window"):
                CompiledEngine(model, tok, decode_attention=kernel)
    finally:
        model.config.sliding_window = None
        model.config._attn_implementation = "sdpa"


def test_fused_projections_give_the_reference_tokens(tiny_models):
    """Q/K/V and gate/up as one product each (the model becomes transformers' Phi-3): the same
    weights, the same tokens as the reference in float32."""
    from nerfleet.workers.engine import CompiledEngine

    model, tok = load(resolve(str(tiny_models["tiny-a"])), device="cpu", dtype="float32")
    params = sum(p.numel() for p in model.parameters())
    reqs = requests(n=4, max_new_tokens=16)
    simple = SimpleEngine(model, tok).generate(reqs)
    engine = CompiledEngine(model, tok, batch_size=4, decode_attention="sdpa", fuse_projections=True)
    assert type(engine.model).__name__ == "Phi3ForCausalLM"
    assert sum(p.numel() for p in engine.model.parameters()) == params
    assert engine.model.model.layers[0].self_attn.qkv_proj.weight.shape[0] == (
        model.config.num_attention_heads + 2 * model.config.num_key_value_heads
    ) * (model.config.hidden_size // model.config.num_attention_heads)
    assert [r.output for r in engine.generate(reqs)] == [r.output for r in simple]
    # the weights are held once: the model passed in works on, its projections views of the fused ones
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.untyped_storage().data_ptr() == (
        engine.model.model.layers[0].self_attn.qkv_proj.weight.untyped_storage().data_ptr()
    )
    assert [r.output for r in SimpleEngine(model, tok).generate(reqs)] == [r.output for r in simple]


@pytest.mark.parametrize("arch", ["llama-tied", "mistral-gqa"])
def test_fused_model_computes_the_same_logits(arch):
    """Both fusable architectures, with tied embeddings and with grouped-query attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from nerfleet.workers.fusion import fuse

    small = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8)
    torch.manual_seed(0)
    if arch == "llama-tied":
        model = LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=True, rope_theta=500000.0)).eval()
    else:
        model = MistralForCausalLM(MistralConfig(**small, num_key_value_heads=2, sliding_window=None)).eval()
    ids = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        before = model(ids).logits
        fused = fuse(model)
        # the same products, only wider: equal up to float32 rounding (exactly equal on this machine)
        torch.testing.assert_close(fused(ids).logits, before, rtol=0, atol=1e-5)
        assert torch.equal(model(ids).logits, before)  # the original still works on the shared weights
    assert fused.config.rope_parameters["rope_theta"] == model.config.rope_parameters["rope_theta"]


@pytest.mark.parametrize("arch", ["llama-tied", "mistral-gqa"])
def test_column_major_fused_weights_compute_the_same_logits_and_are_held_once(arch):
    """Weights stored transposed: the same logits; every product's weight has strides (1, in);
    the original model shares them (its logits unchanged), so nothing is held twice."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from nerfleet.workers.fusion import fuse

    small = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8)
    torch.manual_seed(0)
    if arch == "llama-tied":
        model = LlamaForCausalLM(LlamaConfig(**small, tie_word_embeddings=True)).eval()
    else:
        model = MistralForCausalLM(MistralConfig(**small, num_key_value_heads=2, sliding_window=None)).eval()
    ids = torch.randint(0, 300, (3, 20))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        before = model(ids).logits
        fused = fuse(model, column_major=True)
        torch.testing.assert_close(fused(ids).logits, before, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-5)
    tied = fused.get_input_embeddings().weight
    linears = [m for m in fused.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.stride(0) == 1 for m in linears if m.weight is not tied)
    assert (fused.lm_head.weight is tied) == (arch == "llama-tied")
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *fused.parameters()]
    }
    assert sum(storages.values()) == weight_bytes


def test_models_that_cannot_be_fused_are_refused_in_one_line():
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from nerfleet.workers.fusion import fuse

    small = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match="^cannot fuse the projections of LlamaForCausalLM with biased projections$"):
        fuse(LlamaForCausalLM(LlamaConfig(**small, attention_bias=True)))
    with pytest.raises(ValueError, match="MistralForCausalLM with a sliding window"):
        fuse(MistralForCausalLM(MistralConfig(**small, sliding_window=16)))


def _small(arch: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from nerfleet.workers.fusion import fuse

    small = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8)
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**small)).eval()
    mistral = MistralForCausalLM(MistralConfig(**small, num_key_value_heads=2, sliding_window=None)).eval()
    return fuse(mistral) if arch == "phi3-fused" else mistral


@pytest.mark.parametrize("arch", ["llama", "mistral", "phi3-fused"])
def test_prefill_last_layer_at_the_last_position_gives_the_same_logits_and_cache(arch):
    """The shortcut changes what is computed, not what comes out: the last position's logits and
    every layer's cached keys and values equal a full prefill's; outside it, every position."""
    import torch
    from transformers import DynamicCache

    from nerfleet.workers.prefill import last_position_only

    model = _small(arch)
    ids = torch.randint(1, 300, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # a left-padded row
    seen = []
    model.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        full_cache, short_cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
        full = model(ids, attention_mask=mask, past_key_values=full_cache, logits_to_keep=1).logits
        with last_position_only(model):
            short = model(ids, attention_mask=mask, past_key_values=short_cache, logits_to_keep=1).logits
        assert model(ids).logits.shape[1] == 20
    assert seen == [20, 1, 20]
    torch.testing.assert_close(short, full, rtol=0, atol=1e-5)
    for a, b in zip(full_cache.layers, short_cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_compiled_engine_prefills_the_last_layer_at_the_last_position_only(tiny):
    from nerfleet.workers.engine import CompiledEngine

    model, tok = tiny
    reqs = requests(n=3, max_new_tokens=6)
    widths = {}
    for shortcut in (True, False):
        cls = type("Engine", (CompiledEngine,), {"last_position_prefill": shortcut})
        engine = cls(model, tok, batch_size=3, decode_attention="sdpa")
        seen = []
        mlp = engine.model.model.layers[-1].mlp
        hook = mlp.register_forward_hook(lambda m, a, o, seen=seen: seen.append(a[0].shape[1]))
        outputs = [r.output for r in engine.generate(reqs)]
        hook.remove()
        widths[shortcut] = seen[0]
        assert set(seen[1:]) == {1}  # the decoding steps
    assert widths[True] == 1 and widths[False] > 1
    assert outputs == [r.output for r in SimpleEngine(model, tok).generate(reqs)]


def test_the_last_position_shortcut_is_refused_in_one_line():
    from nerfleet.workers.prefill import last_position_only, last_position_refusal

    assert last_position_refusal(_small("llama")) is None
    with pytest.raises(ValueError, match="^cannot run the last layer at the last position only: object has no"):
        with last_position_only(object()):
            pass


def test_compiled_prefill_takes_the_shortcut_in_one_graph(tiny):
    """The prefill as the engine compiles it on a GPU, here by inductor on the CPU: the wrapped
    last layer traces without a graph break and gives the reference tokens."""
    import torch
    from torch._dynamo.utils import counters

    from nerfleet.workers.engine import CompiledEngine

    class CpuPrefillEngine(CompiledEngine):
        def _prefill_compilable(self) -> bool:
            return True

    model, tok = tiny
    reqs = requests(n=3, max_new_tokens=6)
    torch._dynamo.reset()
    counters.clear()
    engine = CpuPrefillEngine(model, tok, batch_size=3, decode_attention="sdpa")
    assert engine._last_position
    assert [r.output for r in engine.generate(reqs)] == [r.output for r in SimpleEngine(model, tok).generate(reqs)]
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_a_batch_is_left_padded_with_its_mask_over_the_whole_cache():
    batch = [[5, 6, 7], [8], []]
    ids = left_padded(batch, 4, pad=0)
    assert ids.dtype == torch.long and ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]]
    mask = prompt_mask(batch, 4, 6, "cpu")
    assert mask.dtype == torch.long
    assert mask.tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert left_padded([[]], 0, pad=0).shape == (1, 0)


def test_a_static_step_mask_is_kept_per_batch_shape_and_gives_the_reference_tokens(tiny, monkeypatch):
    from nerfleet.workers.engine import CompiledEngine

    monkeypatch.setattr(CompiledEngine, "static_step_mask", True)
    model, tok = tiny
    reqs = requests(n=6, max_new_tokens=12)
    simple = [r.output for r in SimpleEngine(model, tok).generate(reqs)]
    engine = CompiledEngine(model, tok, batch_size=4, decode_attention="sdpa")
    try:
        assert [r.output for r in engine.generate(reqs[:4])] == simple[:4]
        kept = engine._mask
        assert kept is not None and kept.shape[0] == 4
        assert [r.output for r in engine.generate(reqs[2:6])] == simple[2:6]  # same shape: refilled in place
        assert engine._mask is kept
        assert [r.output for r in engine.generate(reqs[:2])] == simple[:2]  # another shape: a new tensor
        assert engine._mask is not kept and engine._mask.shape[0] == 2
    finally:
        model.config._attn_implementation = "sdpa"  # leave the shared fixture as it was


def test_rotary_cos_and_sin_are_computed_once_per_forward_pass_in_compiled_code(tiny):
    """Inductor otherwise recomputes cos/sin inside every layer's rotary kernels, for every head
    and element (workers/rotary.py); the logits stay those of eager mode."""
    import re

    from torch._inductor.utils import run_and_get_code
    from transformers import LlamaForCausalLM

    from nerfleet.workers.rotary import materialize_rotary

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny[0].config).eval()
    assert model.config.num_hidden_layers >= 2
    ids = torch.randint(4, model.config.vocab_size, (2, 24))
    positions = torch.arange(24).expand(2, 24)
    with torch.no_grad():
        eager = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        assert materialize_rotary(model) == 1
        assert materialize_rotary(model) == 0  # wrapped once
        torch._dynamo.reset()
        compiled = torch.compile(model.forward, dynamic=False)
        logits, code = run_and_get_code(lambda: compiled(input_ids=ids, position_ids=positions, use_cache=False).logits)
    torch._dynamo.reset()
    assert len(re.findall(r"std::cos\(|\.cos\(\)", "\n".join(code))) == 1
    torch.testing.assert_close(logits, eager, rtol=1e-5, atol=1e-5)
