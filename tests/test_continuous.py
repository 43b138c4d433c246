"""The continuous-batching engine on the CPU: slots refilled as requests end, each request stopped on
its own, results in request order, the reference's tokens in float32; and through a real worker."""

from __future__ import annotations

import json
import re
import threading

import pytest
import torch
from sqlmodel import select

from nerfleet.evaluation.prompts import load_prompt
from nerfleet.workers.continuous import ContinuousEngine, SlotConfig
from nerfleet.workers.engine import GenerationRequest
from nerfleet.workers.models import load, resolve
from nerfleet.workers.simple import SimpleEngine
from tests.test_engine import requests


def _load(path):
    # a model of its own for each engine: the continuous engine switches its model's attention
    return load(resolve(str(path)), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(tiny_models):
    model, tok = _load(tiny_models["tiny-a"])
    return SimpleEngine(model, tok, invariant=False)


@pytest.fixture(scope="module")
def continuous(tiny_models):
    model, tok = _load(tiny_models["tiny-a"])
    # with kept prefixes: the tests below check the reference's tokens with them in use
    return ContinuousEngine(model, tok, config=SlotConfig(slots=2, check_every=3, slot_len=1024, prefix_entries=8))


def _varied(n=7):
    """Requests of different budgets: short ones end while long ones still run in the other slot."""
    return [
        GenerationRequest(r.key, r.template, r.text, (5, 17, 9, 23, 3, 12, 30)[i % 7])
        for i, r in enumerate(requests(n, 1))
    ]


def test_refilled_slots_give_the_reference_tokens_in_request_order(reference, continuous):
    reqs = _varied()
    want = reference.generate(reqs)
    steps = continuous.stats["steps"]
    got = continuous.generate(reqs)
    assert [r.key for r in got] == [r.key for r in reqs]
    assert [r.output for r in got] == [r.output for r in want]
    assert [r.output_tokens for r in got] == [r.max_new_tokens for r in reqs] == [r.output_tokens for r in want]
    # Two slots for seven requests: each freed slot was refilled while the other kept decoding.
    # A static batch of two would run max(budgets) steps a pair; the slots run far fewer.
    static = sum(max(reqs[i].max_new_tokens, reqs[i + 1].max_new_tokens) for i in range(0, 6, 2)) + 30
    assert continuous.stats["steps"] - steps < static - 20


def test_the_prefill_attention_never_runs_on_cudnn(continuous, monkeypatch):
    """cuDNN builds an attention graph per new (rows, width), tens of milliseconds each on an H100
    (bench/sdpa_shapes.py), and a fleet's prefills mostly bring new ones: every prefill attention
    call runs with cuDNN switched off and flash on, and the switches are as they were afterwards."""
    import nerfleet.workers.continuous as module

    seen = []
    real = module.F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        backends = torch.backends.cuda
        seen.append((continuous._prefilling, backends.cudnn_sdp_enabled(), backends.flash_sdp_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(module.F, "scaled_dot_product_attention", spy)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    continuous.generate(requests(2, 1))
    prefill = [(cudnn, flash) for prefilling, cudnn, flash in seen if prefilling]
    assert prefill and set(prefill) == {(False, True)}, seen
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_prompts_of_any_lengths_are_packed_into_one_prefill_without_padding(tiny_models, reference):
    """Prompts of very different lengths go through one prefill, end to end: it computes exactly
    their tokens, none of padding, and each prompt's answer is the reference's (its attention saw
    only its own prompt)."""
    notes = requests(6, 4)
    words = " ".join(r.text for r in notes).split()
    reqs = [GenerationRequest(f"p{k}", "{clinical_text}", " ".join(words[: 4 + 40 * k]), 4) for k in range(12)]
    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=12, slot_len=2048, prefill_rows=12))
    got = engine.generate(reqs)
    assert [r.output for r in got] == [r.output for r in reference.generate(reqs)]
    stats = engine.stats
    assert stats["prefills"] == 1
    assert stats["prefill_positions"] == stats["prompt_tokens"] == sum(r.prompt_tokens for r in got)


def test_the_slot_cache_read_by_rows_is_each_slots_keys_in_place():
    """Flash's kernel reads each packed prompt's keys from its slot through this view: row
    s * heads * length + p must be slot s's keys at position p, for every head, with no copy."""
    from nerfleet.workers.packing import by_row, pack

    slots, heads, length, d = 5, 3, 7, 4
    cache = torch.randn(slots, heads, length, d)
    rows = by_row(cache)
    assert rows.data_ptr() == cache.data_ptr() and rows.stride(-1) == 1
    for s in range(slots):
        for p in range(length):
            assert torch.equal(rows[s * heads * length + p], cache[s, :, p])
    with pytest.raises(ValueError, match="contiguous"):
        by_row(cache.transpose(1, 2))
    # a packing's key starts and lengths (flash's cu_seqlens_k, seqused_k) pick each prompt's keys
    # from its own slot: its kept prefix and its own tokens, nothing of the slots between
    packing = pack([[1] * 4, [2] * 6, [3] * 2], [0, 3, 0], [4, 1, 2], [0, 0, 0], "cpu", heads * length)
    starts = packing.key_starts.tolist()
    for i, (slot, m) in enumerate(zip(packing.slots, packing.k_used.tolist())):
        assert torch.equal(rows[starts[i] : starts[i] + m], cache[slot, :, :m].transpose(0, 1))
    assert starts[-1] == starts[-2] + packing.k_lens[-1]


def test_a_prefill_holds_at_most_its_tokens(tiny_models, reference):
    """A prefill takes the next prompts in line while their tokens fit ``prefill_tokens`` (one
    prompt longer than that still goes alone); the answers are the reference's."""
    reqs = requests(6, 3)
    model, tok = _load(tiny_models["tiny-a"])
    longest = max(len(ids) for ids, _ in SimpleEngine(model, tok).encode_all(reqs))
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=6, slot_len=2048, prefill_tokens=longest + 1))
    got = engine.generate(reqs)
    assert [r.output for r in got] == [r.output for r in reference.generate(reqs)]
    assert engine.stats["prefills"] == len(reqs)  # no two prompts fit together


def test_a_free_slot_reads_one_key_a_step(tiny_models, reference):
    """A slot whose request has ended stays at position 0 until it is filled again: the decoding
    steps' attention reads one key of it, not the live range its last request left (which the
    issue's floor does not count)."""
    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=2, check_every=2, slot_len=1024))
    short, long = (GenerationRequest(r.key, r.template, r.text, n) for r, n in zip(requests(2, 1), (2, 20)))
    ends: list[list[int]] = []
    step = engine._step

    def recorded():
        step()
        ends.append(engine.bounds[:, 1].tolist())

    engine._step = recorded  # on the CPU the loop calls the step itself, uncompiled
    got = engine.generate([short, long])
    assert [r.output for r in got] == [r.output for r in reference.generate([short, long])]
    slot_of_short = 0  # the first slot free takes the first request in line
    after = [row[slot_of_short] for row in ends[4:]]  # a window of 2 steps, then one more
    assert after and set(after) == {1}, ends
    assert ends[-1][1] > 20  # the long request's own range grew step by step
    assert engine.positions.tolist() == [0, 0]  # both freed


def test_answers_are_handed_back_once_the_next_steps_are_queued(tiny_models, monkeypatch):
    """A request's answer wakes its caller's thread, which stores it and takes the interpreter's lock
    meanwhile: the loop hands answers back after it has queued the next window's steps (or a
    prefill), so that the GPU has work while the callers run, not as each request ends."""
    from nerfleet.workers import slots as slots_module

    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=2, check_every=2, slot_len=1024))
    short, long = (GenerationRequest(r.key, r.template, r.text, n) for r, n in zip(requests(2, 1), (2, 12)))
    events: list[str] = []
    step, deliver = engine._step, slots_module.Call.deliver

    def recorded_step():
        step()
        events.append("step")

    def recorded_deliver(call, index, result):
        events.append(f"answer {index}")
        deliver(call, index, result)

    engine._step = recorded_step
    monkeypatch.setattr(slots_module.Call, "deliver", recorded_deliver)
    got = engine.generate([short, long])
    assert [r.output_tokens for r in got] == [2, 12]
    # the short answer's second token came from the first step; the next window's two steps ran
    # before it was handed back
    assert events.index("answer 0") == 3, events
    assert events[-1] == "answer 1"


def test_a_windows_tokens_are_read_once_the_next_window_is_queued(tiny_models, reference, monkeypatch):
    """The host reads a window's tokens while the GPU runs the next window, so the GPU does not wait
    for the host between windows; the answers stay the reference's, a slot refilled after a stop
    token (its request ended inside a window) included."""
    from nerfleet.workers import slots as slots_module

    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=2, check_every=2, slot_len=1024))
    events: list[str] = []
    step, read = engine._step, slots_module.StagedTokens.read

    def recorded_step():
        step()
        events.append("step")

    def recorded_read(staged):
        events.append("read")
        return read(staged)

    engine._step = recorded_step
    monkeypatch.setattr(slots_module.StagedTokens, "read", recorded_read)
    (one,) = requests(1, 9)
    got = engine.generate([one])
    assert [r.output for r in got] == [r.output for r in reference.generate([one])]
    # the first window's tokens are read after the second window's steps are queued, and so on
    assert events[:7] == ["step", "step", "step", "step", "read", "step", "step"], events
    # the prefill made the first of its 9 tokens; 8 steps made the rest, in 4 windows: none wasted
    assert events.count("step") == 8 and events.count("read") == 4


def test_an_answer_that_cannot_be_made_fails_its_caller_alone(tiny_models, reference):
    """An error while making one answer (decoding its tokens) reaches that request's caller; the
    callers beside it get their answers, and nobody waits forever."""
    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=2, check_every=2, slot_len=1024))
    bad, *good = requests(3, 4)
    make = engine._result

    def result(req, *args):
        if req.key == bad.key:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "not text")
        return make(req, *args)

    engine._result = result
    outcome: dict = {}

    def call(name, reqs):
        try:
            outcome[name] = engine.generate(reqs)
        except UnicodeDecodeError as exc:
            outcome[name] = exc

    # daemon threads: were a caller left waiting, the test fails instead of hanging the suite
    threads = [threading.Thread(target=call, args=a, daemon=True) for a in (("bad", [bad]), ("good", good))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert isinstance(outcome["bad"], UnicodeDecodeError)
    assert [r.output for r in outcome["good"]] == [r.output for r in reference.generate(good)]


def test_each_request_stops_at_its_own_stop_token(tiny_models, reference):
    reqs = requests(4, 16)
    # a token that the second answer generates in its middle (and not before) becomes the stop token
    ids = reference._run([reference.encode(reqs[1])[0]], 16)[0]
    stop = next(t for i, t in enumerate(ids) if i >= 4 and t not in ids[:i])
    model, tok = _load(tiny_models["tiny-a"])
    model.generation_config.eos_token_id = stop
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=3, check_every=4, slot_len=1024))
    ref_model, ref_tok = _load(tiny_models["tiny-a"])
    ref_model.generation_config.eos_token_id = stop
    stopped = SimpleEngine(ref_model, ref_tok, invariant=False).generate(reqs)
    got = engine.generate(reqs)
    assert [r.output for r in got] == [r.output for r in stopped]
    assert got[1].output_tokens < 16 and got[1].output_tokens == stopped[1].output_tokens
    assert any(r.output_tokens == 16 for r in got)  # the others ran to their own budget


def test_a_long_document_is_cut_to_the_slot_and_recorded(tiny_models):
    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=2, slot_len=300))
    long = GenerationRequest("long", load_prompt("v1").template, "fever and cough. " * 400, 8)
    (res, short) = engine.generate([long, *requests(1, 8)])
    assert res.truncated and res.prompt_tokens <= 300 - 8 and res.output_tokens == 8
    assert not short.truncated


def test_callers_in_several_threads_share_the_slots(reference, continuous):
    """The worker's task threads call one engine at once; each gets its own answers."""
    batches = [requests(6, 10)[i::3] for i in range(3)]
    want = [reference.generate(b) for b in batches]
    got: list = [None] * 3

    def call(i):
        got[i] = continuous.generate(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [[r.output for r in g] for g in got] == [[r.output for r in w] for w in want]


def _mistral(common):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(sliding_window=48, **common))


def _qwen2(common):
    # biases on the q/k/v projections, as in the Qwen2.5-Coder models of the study
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**common))


def _gemma3(common):
    # sliding and global layers with their own rotary, q/k norms, a query scalar: Gemma 3 270M's shape
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        sliding_window=48,
        layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=24,
        head_dim=16,
        **common,
    )
    return Gemma3ForCausalLM(config)


@pytest.mark.parametrize("build", [_mistral, _qwen2, _gemma3], ids=["mistral-window", "qwen2", "gemma3"])
def test_each_served_architecture_matches_the_reference(tmp_path, build):
    """The study's architectures with windows shorter than the prompts: the prefill's window mask,
    the decoding step's windowed bounds, biases, norms and scalings give transformers' own tokens."""
    from tests.helpers import make_tiny_model

    model, tok = _load(make_tiny_model(tmp_path / "llama"))
    common = dict(
        vocab_size=model.config.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    torch.manual_seed(3)
    served = build(common).eval()
    served.generation_config.eos_token_id = None  # run to the budget: 40 tokens cross the window
    folder = tmp_path / "served"
    served.save_pretrained(folder)
    tok.save_pretrained(folder)
    reqs = requests(3, 40)
    assert all(len(SimpleEngine(*_load(folder)).encode(r)[0]) > 48 for r in reqs)
    want = SimpleEngine(*_load(folder), invariant=False).generate(reqs)
    got = ContinuousEngine(*_load(folder), config=SlotConfig(slots=2, slot_len=1024)).generate(reqs)
    assert [r.output for r in got] == [r.output for r in want]


def test_guided_rows_parse_strictly_beside_unguided_ones(tiny_models):
    pytest.importorskip("xgrammar")
    from nerfleet.evaluation.parsing import parse

    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=3, slot_len=1024))
    plain = requests(6, 60)
    reqs = [
        GenerationRequest(r.key, load_prompt(fmt).template, r.text, 60, guide=guide)
        for r, (fmt, guide) in zip(plain, [("v2", "dict"), ("v3", "json"), ("v1", None)] * 2)
    ]
    got = engine.generate(reqs)
    for req, res in zip(reqs, got):
        if req.guide:
            assert parse(res.output, req.guide).strict, res.output


def test_pipelined_guided_windows_give_the_guided_reference_tokens(tiny_models, reference):
    """Guided rows decoded in windows of several steps (each step's masks filled while the next
    forward runs, rows ending inside a window) choose the tokens that one request at a time through
    ``generate``'s logits processor chooses, closing preference included."""
    pytest.importorskip("xgrammar")
    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=3, check_every=4, slot_len=1024))
    plain = requests(6, 30)
    reqs = [
        GenerationRequest(r.key, load_prompt(fmt).template, r.text, budget, guide=guide)
        for r, (fmt, guide, budget) in zip(plain, [("v2", "dict", 45), ("v3", "json", 50), ("v1", None, 7)] * 2)
    ]
    got = engine.generate(reqs)
    want = reference.generate(reqs)
    assert [r.output for r in got] == [r.output for r in want]
    assert min(r.output_tokens for r, q in zip(got, reqs) if q.guide) > 4  # windows of several steps


@pytest.mark.slow
def test_a_continuous_worker_resumes_after_kill_9_and_stores_each_job_once(
    home, broker, demo_corpus, tiny_models, tmp_path, monkeypatch
):
    """Several task threads feed one engine; a worker killed mid-run loses nothing and duplicates nothing."""
    import os

    from nerfleet.settings import get_settings
    from nerfleet.storage.db import session_scope
    from nerfleet.storage.tables import Generation, Job, Run
    from nerfleet.tasks.app import make_app
    from nerfleet.tasks.producer import create_run
    from tests.helpers import FLEET_ENV, Worker, wait_for

    for key, value in {**FLEET_ENV, "NERFLEET_SLOTS": "3"}.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    a = str(tiny_models["tiny-a"])
    first = Worker(a, dict(os.environ), tmp_path / "first.log", name="first@%h", engine="continuous").wait_ready()
    assert "3 slots, 3 tasks in flight" in first.log.read_text()
    # answers long enough that the first worker is still busy when it is killed (under a loaded CPU
    # the test's polling can lag behind a fast worker)
    plan = create_run([a], ["v1", "v2", "v3"], "all", 8, 96, None, str(demo_corpus), app=make_app())

    def done() -> int:
        with session_scope() as s:
            return len(s.exec(select(Generation)).all())

    wait_for(lambda: done() >= 3, 180, 0.1, "some jobs stored")
    first.kill()
    second = Worker(a, dict(os.environ), tmp_path / "second.log", name="second@%h", engine="continuous")
    try:
        second.wait_ready()
        create_run([a], ["v1", "v2", "v3"], "all", 8, 96, None, str(demo_corpus), app=make_app())

        def aggregated() -> bool:
            with session_scope() as s:
                return s.get(Run, plan.run_id).aggregated_at is not None

        wait_for(aggregated, 240, 0.5, "aggregation")
    finally:
        second.stop()
    with session_scope() as s:
        jobs = s.exec(select(Job)).all()
        gens = s.exec(select(Generation)).all()
    assert len(jobs) == 24 and all(j.state == "done" for j in jobs)
    assert len(gens) == 24 and {g.engine for g in gens} == {"continuous"}
    log = second.log.read_text()
    assert "first token" in log
    # a worker stopped as usual says what its engine did
    counters = json.loads(re.search(r"engine counters (\{.*\})", log).group(1))
    assert counters["steps"] > 0 and 0 < counters["generated"] <= 24 * 96


def test_close_answers_what_is_in_hand_then_frees_the_slots(tiny_models, reference):
    model, tok = _load(tiny_models["tiny-a"])
    engine = ContinuousEngine(model, tok, config=SlotConfig(slots=2, slot_len=1024))
    reqs = requests(3, 6)
    assert [r.output for r in engine.generate(reqs)] == [r.output for r in reference.generate(reqs)]
    engine.close()
    assert engine._thread is None and engine.keys == []


def test_workers_sharing_a_gpu_each_take_their_share_of_its_memory():
    from nerfleet.workers.continuous import slots_that_fit

    gib = 2**30
    # an 80 GiB GPU, a worker holding 14 GiB of weights, 1 GiB reserved, 0.25 GiB a slot
    assert slots_that_fit(66 * gib, 80 * gib, 14 * gib, 0.9, gib, gib // 4, 512) == 228
    # four workers at 0.2 each: the same slots whichever starts first (free memory aside)
    assert slots_that_fit(60 * gib, 80 * gib, 2 * gib, 0.2, gib, gib // 4, 512) == 52
    assert slots_that_fit(20 * gib, 80 * gib, 2 * gib, 0.2, gib, gib // 4, 512) == 52
    assert slots_that_fit(80 * gib, 80 * gib, 0, 0.9, 0, 2**20, 512) == 512  # at most max_slots
    with pytest.raises(torch.OutOfMemoryError, match="NERFLEET_GPU_MEMORY_FRACTION"):
        slots_that_fit(80 * gib, 80 * gib, 15 * gib, 0.2, gib, gib // 4, 512)


def test_a_templates_prefix_is_computed_once_and_gives_the_reference_tokens(tiny_models, reference):
    """Prompts of one template share their first tokens: the engine keeps them once per template
    and prefills only the rest of each prompt after a copy; the answers are the reference's."""
    reqs = [GenerationRequest(r.key, r.template, r.text, 9) for r in requests(9, 1)]  # v1, v2, v3 × 3
    model, tok = _load(tiny_models["tiny-a"])
    cfg = SlotConfig(slots=4, check_every=3, slot_len=1024, prefix_entries=8)
    engine = ContinuousEngine(model, tok, config=cfg)
    got = engine.generate(reqs)
    assert [r.output for r in got] == [r.output for r in reference.generate(reqs)]
    stats = engine.stats
    assert stats["prefixes_kept"] == 3  # one per template
    # every prompt's template up to its note (the chat template's head besides) came from the copy
    heads = sum(len(tok(load_prompt(("v1", "v2", "v3")[i % 3]).template.split("{")[0])["input_ids"]) for i in range(9))
    assert stats["prefix_tokens"] >= heads
    assert stats["prefill_positions"] < stats["prompt_tokens"]  # the prefixes were not computed again
    # kept prefixes do not split the prefills (on a GPU each prefill has a cost of its own)
    model, tok = _load(tiny_models["tiny-a"])
    whole = ContinuousEngine(model, tok, config=SlotConfig(slots=4, check_every=3, slot_len=1024, prefix_entries=0))
    assert [r.output for r in whole.generate(reqs)] == [r.output for r in got]
    assert stats["prefills"] <= whole.stats["prefills"] and whole.stats["prefix_tokens"] == 0


def test_shared_prefix_leaves_each_prompt_a_token_of_its_own():
    from nerfleet.workers.prefixes import shared_prefix

    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]], 100) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]], 100) == 2  # the shorter keeps its last token
    assert shared_prefix([[7, 7, 7, 7, 1], [7, 7, 7, 7, 2]], 3) == 3  # at most the longest kept
    assert shared_prefix([[1, 2], [3, 4]], 100) == 0
