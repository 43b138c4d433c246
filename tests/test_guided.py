"""Guided decoding: the v2 grammar and the v3 schema by construction, on a tiny model and on SmolLM2."""

import pytest

from nerfleet.evaluation.corpus import build_corpus, read_test_ids
from nerfleet.evaluation.parsing import parse
from nerfleet.evaluation.prompts import load_prompt
from nerfleet.workers.batched import BatchedEngine
from nerfleet.workers.engine import GenerationRequest
from nerfleet.workers.simple import SimpleEngine
from tests.conftest import DEMO_CORPUS, SHARED_DATA

pytest.importorskip("xgrammar")


def _requests(texts, prompt, max_new_tokens):
    p = load_prompt(prompt)
    return [
        GenerationRequest(f"{prompt}-{i}", p.template, t, max_new_tokens, guide=p.format if p.guided else None)
        for i, t in enumerate(texts)
    ]


def test_guided_conditions_are_conditions_of_their_own():
    v2, g2 = load_prompt("v2"), load_prompt("v2+guided")
    assert g2.guided and g2.template == v2.template and g2.format == "dict"
    assert g2.hash != v2.hash and g2.name == "v2+guided"
    with pytest.raises(ValueError, match="nothing to guide"):
        load_prompt("v1+guided")


def test_a_changed_grammar_is_a_changed_condition(monkeypatch):
    """The grammar is part of a guided condition's identity: jobs made under another grammar are
    other jobs, never resumed as these (the unguided prompt's identity does not move)."""
    from nerfleet.evaluation import grammars

    before, free = load_prompt("v2+guided").hash, load_prompt("v2").hash
    monkeypatch.setattr(grammars, "V2_GRAMMAR", grammars.V2_GRAMMAR.replace("]*", "]{0,99}"))
    assert load_prompt("v2+guided").hash != before and load_prompt("v2").hash == free


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("guided") / "tiny", seed=3)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("prompt", ["v2+guided", "v3+guided"])
def test_every_guided_answer_of_a_random_model_parses_strictly(tiny, prompt):
    """A random model writes anything it is allowed: the grammar alone makes these answers parse."""
    model, tok = tiny
    docs = build_corpus(DEMO_CORPUS, test_ids=read_test_ids(DEMO_CORPUS / "test_ids.txt")).documents
    texts = ([d.text[:400] for d in docs] * 2)[:20]
    engine = BatchedEngine(model, tok, batch_size=10, invariant=False)
    results = engine.generate(_requests(texts, prompt, 120))  # a 600-token vocabulary spells JSON slowly
    fmt = load_prompt(prompt).format
    assert len(results) == 20
    assert all(parse(r.output, fmt).strict for r in results), [r.output for r in results]
    assert all(r.output_tokens <= 120 for r in results)
    # the same rows unguided: the random model's text is no structure
    free = engine.generate(_requests(texts[:4], prompt.removesuffix("+guided"), 30))
    assert not any(parse(r.output, fmt).strict for r in free)


def test_guided_and_free_rows_share_a_batch(tiny):
    model, tok = tiny
    mixed = _requests(["fever and cough"], "v3+guided", 120) + _requests(["fever and cough"], "v3", 40)
    batched = BatchedEngine(model, tok, batch_size=2, invariant=False).generate(mixed)
    alone = SimpleEngine(model, tok, invariant=False).generate(mixed)
    assert [r.output for r in batched] == [r.output for r in alone]
    assert parse(batched[0].output, "json").strict


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no real corpus at {SHARED_DATA} (set NERFLEET_TEST_CORPUS)")
def test_smollm2_guided_answers_on_20_real_notes_parse_strictly():
    from nerfleet.workers.models import load, resolve

    spec = resolve("smollm2")
    model, tok = load(spec, device="cpu")
    # the 20 shortest notes (500-760 characters, 195 gold mentions): real notes, a CPU prefill of minutes
    docs = sorted(build_corpus(SHARED_DATA).documents, key=lambda d: (len(d.text), d.doc_id))[:20]
    engine = BatchedEngine(model, tok, chat=spec.chat, batch_size=20, invariant=False)
    for prompt in ("v2+guided", "v3+guided"):
        results = engine.generate(_requests([d.text for d in docs], prompt, 48))
        assert all(parse(r.output, load_prompt(prompt).format).strict for r in results), prompt
