"""Calibration rows: the floor and the ceiling of each score's own definition.

- ``echo``: the response is the note itself. Strategy 1 only asks whether a gold term is
  *mentioned* in the output, so copying the note scores about as high as the gold does
  (P 0.995 / R 1.000 on the 600 shared documents); a model near the echo has shown nothing.
- ``oracle``: the gold mentions written in each prompt's own format (a list for v1, the v2
  dictionary, the v3 JSON). Strategy 2 tags every occurrence of a parsed term, so even the
  oracle is below 1.0 where a gold term also occurs untagged.

Both are computed from the corpus for the documents and prompts of the grid being scored.
"""

from __future__ import annotations

import json

from nerfleet.evaluation.corpus import Document
from nerfleet.evaluation.spans import LABELS

ECHO = "echo"
ORACLE = "oracle"
CALIBRATION_MODELS = (ECHO, ORACLE)
_DICT_KEYS = {"DISEASE": "diseases", "SYMPTOM": "symptoms", "PROCEDURE": "medical procedures"}
_JSON_CATEGORY = {"DISEASE": "disease", "SYMPTOM": "symptom", "PROCEDURE": "medical procedure"}


def mentions(doc: Document) -> list[tuple[str, str]]:
    """The document's gold mentions (text, label), each distinct one once, in document order."""
    seen: dict[tuple[str, str], None] = {}
    for s in sorted(doc.spans, key=lambda s: s.start):
        seen[(" ".join(doc.text[s.start : s.end].split()), s.label)] = None
    return list(seen)


def oracle_output(doc: Document, fmt: str) -> str:
    """The gold as a perfect model would answer a prompt of format none, dict or json."""
    found = mentions(doc)
    if fmt == "dict":
        lists = {key: [t for t, lab in found if lab == label] for label, key in _DICT_KEYS.items()}
        return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in lists.items()) + "}"
    if fmt == "json":
        anns = [{"entity": t, "category": _JSON_CATEGORY[lab]} for t, lab in found if lab in LABELS]
        return json.dumps({"annotations": anns}, ensure_ascii=False)
    return "\n".join(t for t, _ in found)


def echo_output(doc: Document, fmt: str) -> str:
    return doc.text
