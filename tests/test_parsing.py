"""Golden cases from the paper's Table 7 (mixtral-8x7b-instruct-v0.1 outputs)."""

from nerfleet.evaluation.parsing import map_category, parse, parse_dict, parse_json

TABLE7_V1 = (
    "1. Diseases: - Fever - Sub-Saharan origin (assumed geographical disease association) - Eosinophilia - Renal "
    "hydatid disease (also known as hydatid cyst or echinococcosis) 2. Symptoms: - Sweating - Fever - Left lumbar "
    "pain - Heaviness in the left flank - Dysuria (painful urination)"
)
TABLE7_V2 = (
    "Here are the entities of types disease, symptom, and medical procedure identified in the clinical document: "
    "* Diseases: [renal hydatid disease;] * Symptoms: [sweating; fever; left lumbar pain; heaviness in the left flank; "
    "dysuria; occasional fever; voiding symptoms; acceptable urinary stream; night-time voiding once and daytime "
    "voiding every 3–4 hours with a feeling of complete emptiness] * Medical procedures: [physical examination; "
    "rectal examination; complementary tests; X-ray of the genito-urinary tract; renal ultrasound; abdominopelvic CT "
    "scan; echinococcus/hemag antibody serology; MRI; surgery; course of Albendazole; left nephroureterectomy] Note "
    "that some of the symptoms are mentioned more than once in the document, but I have only included each symptom "
    "once in the list."
)
TABLE7_V3 = "{ annotations:[ {entity: sub-Saharan origin, category: not applicable}, {entity:sweating and fever} ] }"
SILVER = (
    "{diseases: [lesions, cystic lesions, hydatid cyst, allergies, DM], symptoms: [colic, urinary stream, urgency, "
    "fever, dysuria], medical procedures: [Renal ultrasound, MRI, surgery]}"
)


def test_table7_v2_parses_leniently_with_semicolons():
    p = parse_dict(TABLE7_V2)
    assert p.lenient and not p.strict  # no braces: not the exact dictionary shape
    assert ("renal hydatid disease", "DISEASE") in p.entities
    assert ("left lumbar pain", "SYMPTOM") in p.entities
    assert ("left nephroureterectomy", "PROCEDURE") in p.entities
    assert len(p.entities) == 21


def test_table7_v3_has_items_but_no_entity_so_is_not_parsed():
    """Table 5 counts "at least one entity in the requested format": both items lack a usable category."""
    p = parse_json(TABLE7_V3)
    assert not p.lenient and not p.strict
    assert p.items == 2 and p.entities == [] and p.dropped == 2


def test_silver_dictionary_is_strict():
    p = parse_dict(SILVER)
    assert p.strict and p.lenient
    assert ("hydatid cyst", "DISEASE") in p.entities and ("MRI", "PROCEDURE") in p.entities


def test_v1_has_no_structure():
    assert parse(TABLE7_V1, "none") is None
    assert not parse_dict(TABLE7_V1).lenient


def test_json_in_prose_and_code_fence_is_strict():
    out = (
        'Sure! ```json\n{"annotations": [{"entity": "fever", "category": "symptom"}, '
        '{"entity": "CT", "category": "medical procedure"}]}\n``` Hope it helps.'
    )
    p = parse_json(out)
    assert p.strict and p.entities == [("fever", "SYMPTOM"), ("CT", "PROCEDURE")]


def test_quoted_keys_and_commas_inside_quotes():
    out = '{"diseases": ["diabetes mellitus, type 2"], "symptoms": [\'pain\'], "medical procedures": []}'
    p = parse_dict(out)
    assert p.strict
    assert p.entities == [("diabetes mellitus, type 2", "DISEASE"), ("pain", "SYMPTOM")]


def test_prompt_echo_placeholders_are_not_entities():
    echo = (
        "{diseases: [list of diseases], symptoms: [list of symptoms], medical procedures: [list of medical procedures]}"
    )
    assert not parse_dict(echo).lenient
    example = '{"annotations": [{"entity": "entity1", "category": "disease"}]}'
    assert not parse_json(example).lenient


def test_unknown_keys_are_dropped_and_counted():
    p = parse_dict("{diseases: [flu], medications: [aspirin, ibuprofen]}")
    assert p.entities == [("flu", "DISEASE")] and p.dropped == 2 and not p.strict


def test_category_names():
    assert map_category("Medical Procedures") == "PROCEDURE"
    assert map_category("symptom") == "SYMPTOM"
    assert map_category("not applicable") is None
