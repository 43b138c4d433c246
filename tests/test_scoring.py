import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

from nerfleet.evaluation.corpus import build_corpus, read_test_ids
from nerfleet.evaluation.grid import entity_scores, score_grid
from nerfleet.evaluation.matching import MatchParams, TextIndex, matched_run, norm_tokens
from nerfleet.evaluation.parsing import parse
from nerfleet.evaluation.scoring import (
    ENTITY,
    Response,
    entities_of,
    prepare,
    strategy1_spans,
    strategy1_tags,
    strategy2_spans,
    strategy2_tags,
)
from nerfleet.evaluation.spans import LABELS
from tests.conftest import DEMO_CORPUS
from tests.test_parsing import TABLE7_V1, TABLE7_V2, TABLE7_V3

FORMATS = {"v1": "none", "v2": "dict", "v3": "json"}


@pytest.fixture(scope="module")
def docs():
    build = build_corpus(DEMO_CORPUS, test_ids=read_test_ids(DEMO_CORPUS / "test_ids.txt"))
    return {d.doc_id: d for d in build.documents}


@pytest.fixture(scope="module")
def prepared(docs):
    return {k: prepare(d) for k, d in docs.items()}


def v2_listing(doc) -> str:
    by = {lab: [doc.text[s.start : s.end] for s in doc.spans if s.label == lab] for lab in LABELS}
    lists = ["; ".join(by[lab]) for lab in LABELS]
    return f"{{diseases: [{lists[0]}], symptoms: [{lists[1]}], medical procedures: [{lists[2]}]}}"


def test_listing_every_gold_entity_gives_recall_one(docs, prepared):
    doc = docs["en-demo-001"]
    scores = score_grid([Response(doc.doc_id, "m", "v2", v2_listing(doc))], prepared, FORMATS)
    assert scores.strategy2["m"]["v2"]["micro"]["recall"] == 1.0
    assert scores.strategy1["m"]["v2"]["recall"] == 1.0
    cell = scores.parse_ratio["m"]["v2"]
    assert (cell["lenient"], cell["strict"], cell["dropped_items"], cell["n"]) == (1.0, 1.0, 0, 1)


@pytest.mark.parametrize("output", ["", "I'm sorry, but I cannot help with personal medical data."])
def test_empty_or_refusal_scores_zero_and_is_not_parsed(prepared, output):
    scores = score_grid([Response("en-demo-001", "m", p, output) for p in ("v1", "v2", "v3")], prepared, FORMATS)
    for p in ("v1", "v2", "v3"):
        assert scores.strategy1["m"][p]["recall"] == 0.0
    for p in ("v2", "v3"):
        assert scores.strategy2["m"][p]["micro"]["f1"] == 0.0
        assert scores.parse_ratio["m"][p]["lenient"] == 0.0


def test_table7_outputs_on_their_note(prepared):
    """Demo note 001 is written after Table 7's case: the paper's outputs find its mentions."""
    doc = prepared["en-demo-001"]
    s1 = strategy1_spans(doc, TABLE7_V1, MatchParams())
    assert s1, "v1 output mentions gold terms (fever, sweating, dysuria…)"
    s2 = strategy2_spans(doc, parse(TABLE7_V2, "dict"), MatchParams())
    labels = {s.label for s in s2}
    assert {"DISEASE", "SYMPTOM", "PROCEDURE"} <= labels
    assert strategy2_spans(doc, parse(TABLE7_V3, "json"), MatchParams()) == []


def test_exact_versus_partial(prepared):
    doc = prepared["en-demo-001"]
    output = "The patient had lumbar pain."  # gold: "left lumbar pain"
    exact = strategy1_spans(doc, output, MatchParams("exact"))
    partial = strategy1_spans(doc, output, MatchParams("partial", 0.5))
    assert len(partial) > len(exact)
    # A lone stop word never makes a partial match.
    assert matched_run(norm_tokens("pain of the flank"), TextIndex(norm_tokens("of the")), MatchParams()) is None
    with pytest.raises(ValueError):
        MatchParams("fuzzy")


def test_prf_equals_seqeval_on_fixed_and_random_tags():
    gold = [["B-DISEASE", "I-DISEASE", "O", "B-SYMPTOM", "O", "B-PROCEDURE", "I-PROCEDURE"]]
    pred = [["B-DISEASE", "I-DISEASE", "O", "B-DISEASE", "O", "B-PROCEDURE", "O"]]
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(1, 40)
        spans_g, spans_p = [], []
        for spans in (spans_g, spans_p):
            i = 0
            tags = ["O"] * n
            while i < n:
                if rng.random() < 0.3:
                    length = rng.randint(1, 3)
                    lab = rng.choice(LABELS)
                    for k in range(i, min(n, i + length)):
                        tags[k] = ("B-" if k == i else "I-") + lab
                    i += length
                else:
                    i += 1
            spans.append(tags)
        gold += spans_g
        pred += spans_p
    from seqeval.metrics.sequence_labeling import get_entities

    ours = entity_scores([frozenset(get_entities(g)) for g in gold], [frozenset(get_entities(p)) for p in pred], LABELS)
    for kwargs in ({}, {"mode": "strict", "scheme": IOB2}):
        ref = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
        for lab in LABELS:
            assert ours[lab]["f1"] == pytest.approx(ref[lab]["f1-score"])
            assert ours[lab]["precision"] == pytest.approx(ref[lab]["precision"])
        assert ours["micro"]["recall"] == pytest.approx(ref["micro avg"]["recall"])
        assert ours["micro"]["f1"] == pytest.approx(ref["micro avg"]["f1-score"])


def test_entities_of_matches_seqeval_reading_of_tags(prepared):
    from seqeval.metrics.sequence_labeling import get_entities

    doc = prepared["en-demo-003"]
    out = parse(v2_listing_for(doc), "dict")
    spans = strategy2_spans(doc, out, MatchParams())
    assert entities_of(spans) == frozenset(get_entities(strategy2_tags(doc, out, MatchParams())))


def v2_listing_for(doc) -> str:
    return "{diseases: [appendicitis], symptoms: [fever; nausea], medical procedures: [laparoscopic appendectomy]}"


def test_failed_jobs_are_listed_not_scored(prepared):
    scores = score_grid(
        [Response("en-demo-001", "m", "v1", None, "CUDA OOM"), Response("en-demo-003", "m", "v1", "fever")],
        prepared,
        FORMATS,
    )
    assert scores.failed == {"m": {"v1": ["en-demo-001"]}}
    assert scores.counts["m"]["v1"] == {"scored": 1, "failed": 1}


def test_nervaluate_schemas_present(docs, prepared):
    doc = docs["en-demo-001"]
    scores = score_grid([Response(doc.doc_id, "m", "v2", v2_listing(doc))], prepared, FORMATS)
    assert set(scores.nervaluate["m"]["v2"]) == {"strict", "exact", "partial", "ent_type"}
    assert scores.nervaluate["m"]["v2"]["strict"]["recall"] == 1.0
    json.dumps(scores.to_json())  # plain JSON types


def test_nervaluate_from_summed_counts_equals_its_evaluator_over_all_documents(docs, prepared):
    """Each answer's nervaluate counts are stored with its other counts; a cell's four schemas come
    from their sums. They must equal nervaluate's own Evaluator over the whole cell at once."""
    from nervaluate import Evaluator

    from nerfleet.evaluation.scoring import strategy2_spans, tags_from_spans

    rng = random.Random(3)
    responses = []
    for doc_id, d in sorted(prepared.items()):
        listing = v2_listing(docs[doc_id])
        words = d.document.text.split()
        half = ", ".join(" ".join(words[i : i + rng.randint(1, 3)]) for i in range(0, len(words), 7))
        output = listing[: len(listing) // 2] + "]}" if rng.random() < 0.5 else "{diseases: [" + half + "]}"
        responses.append(Response(doc_id, "m", "v2", output))
    scores = score_grid(responses, prepared, FORMATS)
    params = MatchParams()
    gold = [prepared[r.doc_id].gold for r in responses]
    pred = [
        tags_from_spans(
            len(prepared[r.doc_id].tokens), strategy2_spans(prepared[r.doc_id], parse(r.output, "dict"), params)
        )
        for r in responses
    ]
    overall = Evaluator(gold, pred, tags=list(LABELS), loader="list").evaluate()["overall"]
    for schema, got in scores.nervaluate["m"]["v2"].items():
        want = overall[schema]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((want.precision, want.recall, want.f1))
    assert 0 < scores.nervaluate["m"]["v2"]["partial"]["f1"] < 1  # neither all right nor all wrong


def _valid_iob2(tags):
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            return False
        prev = t
    return True


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["v1", "v2", "v3"]))
def test_any_output_never_raises_and_stays_valid(prepared, output, prompt):
    doc = prepared["en-demo-001"]
    tags1 = strategy1_tags(doc, output, MatchParams())
    assert _valid_iob2(tags1) and len(tags1) == len(doc.tokens)
    parsed = parse(output, FORMATS[prompt])
    if parsed is not None:
        tags2 = strategy2_tags(doc, parsed, MatchParams())
        assert _valid_iob2(tags2)
    scores = score_grid([Response(doc.doc_id, "m", prompt, output)], prepared, FORMATS, with_nervaluate=False)
    values = [scores.strategy1["m"][prompt][k] for k in ("precision", "recall", "f1")]
    if prompt != "v1":
        values += [c[k] for c in scores.strategy2["m"][prompt].values() for k in ("precision", "recall", "f1")]
    assert all(0.0 <= v <= 1.0 for v in values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "{",
                "}",
                "[",
                "]",
                '"',
                "'",
                ":",
                ",",
                ";",
                "entity",
                "category",
                "annotations",
                "diseases",
                "symptoms",
                "medical procedures",
                "fever",
                "disease",
                " ",
                "\n",
            ]
        ),
        max_size=60,
    )
)
def test_structured_looking_garbage_never_raises(prepared, pieces):
    output = "".join(pieces)
    for fmt in ("dict", "json"):
        p = parse(output, fmt)
        assert p.items >= len(p.entities)
        strategy2_tags(prepared["en-demo-001"], p, MatchParams())


def test_strategy1_tag_type(prepared):
    tags = strategy1_tags(prepared["en-demo-001"], "fever", MatchParams())
    assert {t[2:] for t in tags if t != "O"} == {ENTITY}
