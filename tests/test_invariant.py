"""Batch-invariant mode: each row computed inside a batch is bitwise the row computed alone.

The Triton kernels run here through Triton's CPU interpreter (TRITON_INTERPRET=1, set by conftest;
no GPU in CI); on a GPU the same
property is measured by ``bench/invariance.py`` and ``bench/same_answers.py --invariant``.
"""

import pytest
import torch
import torch.nn.functional as F

from nerfleet.evaluation.prompts import SLOT
from nerfleet.workers.engine import GenerationRequest
from tests.test_engine import requests

pytest.importorskip("triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_rows_do_not_depend_on_the_batch(dtype):
    from nerfleet.workers.invariant import matmul

    torch.manual_seed(0)
    x = torch.randn(70, 96).to(dtype)  # 70 rows: two row tiles, the second partial
    w = torch.randn(80, 96).to(dtype)
    bias = torch.randn(80).to(dtype)
    full = matmul(x, w.t())  # a transposed (strided) operand, as nn.Linear passes it
    assert torch.equal(matmul(x[9:10], w.t())[0], full[9])
    assert torch.equal(matmul(x[64:], w.t()), full[64:])
    tol = 1e-4 if dtype == torch.float32 else 0.25
    assert torch.allclose(full.float(), x.float() @ w.float().t(), atol=tol)
    with_bias = matmul(x, w.t(), bias)
    assert torch.equal(matmul(x[3:4], w.t(), bias)[0], with_bias[3])
    assert torch.allclose(with_bias.float(), (x.float() @ w.float().t()) + bias.float(), atol=tol)


def test_mean_rows_do_not_depend_on_the_batch_and_match_torch():
    from nerfleet.workers.invariant import mean

    torch.manual_seed(0)
    x = torch.randn(5, 7, 576)
    rms = mean(x.pow(2), [-1], True)
    assert rms.shape == (5, 7, 1)
    assert torch.equal(mean(x[2:3, 4:5].pow(2), [-1], True)[0, 0], rms[2, 4])
    assert torch.allclose(rms, x.pow(2).mean(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(mean(x, [0, 2]), x.mean((0, 2)), atol=1e-6)
    assert torch.allclose(mean(x), x.mean(), atol=1e-6)
    assert mean(x.to(torch.bfloat16), [-1]).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="could not infer output dtype"):
        mean(torch.ones(3, dtype=torch.long), [0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_of_a_left_padded_row_equals_the_row_alone(dtype):
    """Key tiles start at each row's first live key, so padding moves no tile boundary."""
    from nerfleet.workers.invariant import attention

    torch.manual_seed(0)
    b, h, kvh, d, width = 3, 4, 2, 8, 70
    lengths = [5, 70, 33]
    q, k, v = (torch.randn(b, n, width, d).to(dtype) for n in (h, kvh, kvh))
    starts = torch.tensor([width - n for n in lengths], dtype=torch.int32)
    out = attention(q, k, v, starts, d**-0.5)
    for i, n in enumerate(lengths):
        s = width - n
        row = (t[i : i + 1, :, s:].contiguous() for t in (q, k, v))
        alone = attention(*row, torch.zeros(1, dtype=torch.int32), d**-0.5)
        assert torch.equal(alone[0], out[i, s:])
        ref = F.scaled_dot_product_attention(
            *(t[i : i + 1, :, s:].float() for t in (q, k, v)), is_causal=True, enable_gqa=True
        ).transpose(1, 2)
        assert torch.allclose(alone.float(), ref, atol=1e-5 if dtype == torch.float32 else 0.05)
        assert not out[i, :s].any()  # padding queries see no key
    step = attention(q[:, :, -1:], k, v, starts, d**-0.5)  # a decoding step: one query, every row
    for i, n in enumerate(lengths):
        s = width - n
        alone = attention(q[i : i + 1, :, -1:], k[i : i + 1, :, s:], v[i : i + 1, :, s:], starts[:1] * 0, d**-0.5)
        assert torch.equal(alone[0], step[i])


def test_padding_mask_with_holes_is_refused():
    from nerfleet.workers.invariant import first_live

    assert first_live(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]), 2, "cpu").tolist() == [2, 0]
    with pytest.raises(ValueError, match="left padding only"):
        first_live(torch.tensor([[1, 0, 1, 1]]), 1, "cpu")


def test_kernels_route_aten_ops_only_inside_the_mode(monkeypatch):
    from nerfleet.workers import invariant

    calls = []
    real = invariant.matmul
    monkeypatch.setattr(invariant, "matmul", lambda *a: calls.append(a[0].shape) or real(*a))
    a, b = torch.randn(3, 16), torch.randn(16, 8)
    with invariant.kernels("cpu"):
        inside = torch.nn.functional.linear(a, b.t())
        torch.addmm(torch.zeros(8), a, b)
    assert calls == [(3, 16), (3, 16)]
    assert torch.equal(inside, real(a, b))
    torch.mm(a, b)
    assert len(calls) == 2  # the usual kernels are back


def test_mode_needs_cuda_or_the_interpreter(monkeypatch):
    from nerfleet.workers.invariant import check_available

    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="Triton kernels on CUDA"):
        check_available("cpu")


@pytest.mark.slow
def test_batched_equals_simple_in_bfloat16_in_invariant_mode(tiny_models, monkeypatch):
    """The property the mode exists for, end to end through both engines (tiny model, bf16)."""
    from nerfleet.settings import get_settings
    from nerfleet.workers import invariant
    from nerfleet.workers.batched import BatchedEngine
    from nerfleet.workers.continuous import ContinuousEngine, SlotConfig
    from nerfleet.workers.models import load, resolve
    from nerfleet.workers.simple import SimpleEngine

    model, tok = load(resolve(str(tiny_models["tiny-b"])), device="cpu", dtype="bfloat16")
    # short prompts: the interpreter runs every kernel program in Python
    reqs = [
        GenerationRequest(r.key, f"Entities in: {SLOT}", r.text[:n], 6) for r, n in zip(requests(3), (60, 150, 100))
    ]
    monkeypatch.setenv("NERFLEET_BATCH_INVARIANT", "true")
    get_settings.cache_clear()
    try:
        simple = SimpleEngine(model, tok)
        assert simple.invariant and model.config._attn_implementation == "nerfleet_invariant"
        alone = simple.generate(reqs)
        calls = []  # the batched run goes through the invariant kernels, not torch's
        for name in ("matmul", "mean", "attention"):
            real = getattr(invariant, name)
            monkeypatch.setattr(invariant, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
        batched = BatchedEngine(model, tok, batch_size=3)
        together = batched.generate(reqs)
        assert {"matmul", "mean", "attention"} <= set(calls)
        assert (simple.name, batched.name) == ("simple+invariant", "batched+invariant")  # as stored
        with pytest.raises(ValueError, match="no batch-invariant mode"):
            ContinuousEngine(model, tok, config=SlotConfig(slots=1, slot_len=256))
    finally:
        get_settings.cache_clear()
    assert [r.output for r in together] == [r.output for r in alone]
    assert all(r.output_tokens > 0 for r in alone)
    # float32: the mode computes the same model (its tokens are the usual kernels' tokens)
    model32, tok32 = load(resolve(str(tiny_models["tiny-b"])), device="cpu", dtype="float32")
    usual = SimpleEngine(model32, tok32, invariant=False).generate(reqs)
    assert [r.output for r in SimpleEngine(model32, tok32, invariant=True).generate(reqs)] == [r.output for r in usual]


def test_the_mode_is_on_by_default_wherever_it_can_run(tiny_models, monkeypatch):
    """On by default on CUDA with Triton for models without a sliding window; never for the
    continuous engine (its fixed slot shapes keep answers apart); off on the CPU (where the
    interpreter would run every kernel in Python)."""
    from types import SimpleNamespace

    from transformers import MistralConfig

    from nerfleet.workers.continuous import ContinuousEngine, SlotConfig
    from nerfleet.workers.invariant import by_default
    from nerfleet.workers.models import load, resolve
    from nerfleet.workers.simple import SimpleEngine
    from nerfleet.workers.triton_support import triton_missing

    model, tok = load(resolve(str(tiny_models["tiny-a"])), device="cpu", dtype="float32")
    assert not by_default(model) and not SimpleEngine(model, tok).invariant
    # No GPU here: the rule alone is checked on a stand-in that says it lives on CUDA.
    on_gpu = SimpleNamespace(device=torch.device("cuda", 0), config=model.config)
    assert by_default(on_gpu) == (triton_missing() is None)
    on_gpu.config = MistralConfig(sliding_window=4096)
    assert not by_default(on_gpu)
    assert not ContinuousEngine(model, tok, config=SlotConfig(slots=1, slot_len=256)).invariant
    model.set_attn_implementation("sdpa")
    # The engines follow the rule: where it says yes (here, through the interpreter), the simple
    # and batched engines are invariant unless the settings say no, and the continuous one never is.
    from nerfleet.settings import get_settings
    from nerfleet.workers import invariant
    from nerfleet.workers.batched import BatchedEngine

    monkeypatch.setattr(invariant, "by_default", lambda m: True)
    try:
        assert SimpleEngine(model, tok).name == "simple+invariant"
        assert BatchedEngine(model, tok).invariant
        assert not ContinuousEngine(model, tok, config=SlotConfig(slots=1, slot_len=256)).invariant
        model.set_attn_implementation("sdpa")
        monkeypatch.setenv("NERFLEET_BATCH_INVARIANT", "false")
        get_settings.cache_clear()
        assert not SimpleEngine(model, tok).invariant
    finally:
        get_settings.cache_clear()
        model.config._attn_implementation = "sdpa"
