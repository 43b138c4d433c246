from hypothesis import given
from hypothesis import strategies as st

from nerfleet.evaluation.spans import (
    Span,
    boundary_splits,
    iob_to_spans,
    keep_longest,
    spans_to_iob,
    tokenize,
    tokenize_for_spans,
)


def test_tokens_keep_offsets():
    text = "Fiebre de 38,5 °C (alta)."
    for tok in tokenize(text):
        assert text[tok.start : tok.end] == tok.text
    assert [t.text for t in tokenize(text)] == ["Fiebre", "de", "38", ",", "5", "°", "C", "(", "alta", ")", "."]


def test_span_inside_a_word_splits_the_token():
    text = "hepatoesplenomegalia marcada"
    span = Span(6, 20, "SYMPTOM")  # "esplenomegalia", inside the first word
    assert boundary_splits(text, [span]) == 1
    tokens = tokenize_for_spans(text, [span])
    assert [t.text for t in tokens] == ["hepato", "esplenomegalia", "marcada"]
    tags = spans_to_iob(tokens, [span])
    assert tags == ["O", "B-SYMPTOM", "O"]
    assert iob_to_spans(tokens, tags) == [span]


def test_adjacent_spans_of_one_label_stay_apart():
    text = "fiebre tos"
    spans = [Span(0, 6, "SYMPTOM"), Span(7, 10, "SYMPTOM")]
    tokens = tokenize_for_spans(text, spans)
    assert spans_to_iob(tokens, spans) == ["B-SYMPTOM", "B-SYMPTOM"]
    assert iob_to_spans(tokens, spans_to_iob(tokens, spans)) == spans


def test_keep_longest_and_tie_rule():
    long = Span(0, 20, "SYMPTOM")
    inner = Span(5, 10, "DISEASE")
    apart = Span(30, 35, "PROCEDURE")
    kept, removed = keep_longest([inner, long, apart])
    assert kept == [long, apart] and removed == [inner]
    # Equal length: the earlier start wins, then DISEASE < SYMPTOM < PROCEDURE.
    a, b = Span(0, 5, "PROCEDURE"), Span(3, 8, "DISEASE")
    assert keep_longest([b, a])[0] == [a]
    c, d = Span(0, 5, "PROCEDURE"), Span(0, 5, "DISEASE")
    assert keep_longest([c, d])[0] == [d]
    # A chain A-B-C where only B overlaps both: the longest (B) alone survives its neighbours.
    chain = [Span(0, 4, "DISEASE"), Span(2, 9, "SYMPTOM"), Span(8, 12, "DISEASE")]
    assert keep_longest(chain)[0] == [Span(2, 9, "SYMPTOM")]


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(1, 15), st.sampled_from(["DISEASE", "SYMPTOM"])), max_size=12)
)
def test_round_trip_any_resolved_spans(raw):
    text = "el paciente presenta fiebre alta y tos seca desde hace tres dias con dolor"
    spans = [Span(s, min(s + n, len(text)), lab) for s, n, lab in raw if s < len(text)]
    spans = [s for s in spans if text[s.start : s.end].strip() == text[s.start : s.end] and s.length > 0]
    kept, _ = keep_longest(spans)
    for i, a in enumerate(kept):
        for b in kept[i + 1 :]:
            assert not a.overlaps(b)
    tokens = tokenize_for_spans(text, kept)
    # Spans made only of spaces cannot be tokens; every other kept span comes back exactly.
    back = iob_to_spans(tokens, spans_to_iob(tokens, kept))
    assert back == [s for s in kept if text[s.start : s.end].strip()]
