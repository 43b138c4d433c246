"""Engines on the tiny random model: batched equals simple in float32; long documents are cut and recorded."""

import pytest
import torch

from nerfleet.evaluation.prompts import load_prompt
from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.engine import GenerationRequest, left_padded, prompt_mask
from nerfleet.workers.models import load, resolve
from nerfleet.workers.simple import SimpleEngine
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


def test_a_batch_is_left_padded_with_its_mask_over_the_whole_cache():
    batch = [[5, 6, 7], [8], []]
    ids = left_padded(batch, 4, pad=0)
    assert ids.dtype == torch.long and ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]]
    mask = prompt_mask(batch, 4, 6, "cpu")
    assert mask.dtype == torch.long
    assert mask.tolist() == [[0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert left_padded([[]], 0, pad=0).shape == (1, 0)


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
