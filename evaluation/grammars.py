"""The structures a guided condition decodes into: the v2 dictionary grammar and the v3 JSON schema.

Data only (the grammar engine lives in :mod:`nerfleet.workers.guided`). Both are written so that
every output they admit parses *strictly* (:mod:`nerfleet.evaluation.parsing`): the v2 keys in the
order and spelling the prompt shows, items without the separators the parser splits on; the v3
``annotations`` list of ``{entity, category}`` with the category one of the prompt's three names.
"""

from __future__ import annotations

import json

#: Longest entity a guided v3 answer may write (characters).
MAX_ENTITY_CHARS = 100

#: xgrammar's EBNF. An item holds no comma, semicolon, bracket, brace, quote or line break, and
#: starts with none of those nor a space. Its length is not bounded here: a bounded repetition
#: (``{1,100}``) made each mask ~19x dearer in xgrammar (host harness ``bench/grammar_cost.py``: 394
#: against 21 us a row), and the token budget's closing preference (``workers/guided.py``) ends it anyway.
V2_GRAMMAR = (
    'root ::= "{diseases: [" list "], symptoms: [" list "], medical procedures: [" list "]}"\n'
    'list ::= "" | item (", " item)*\n'
    'item ::= [^,;\\[\\]{}"\\n\\r ] [^,;\\[\\]{}"\\n\\r]*\n'
)

V3_SCHEMA = {
    "type": "object",
    "properties": {
        "annotations": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    # no control character (invalid raw in a JSON string), quote or backslash
                    "entity": {"type": "string", "pattern": f'^[^\\x00-\\x1f"\\\\]{{1,{MAX_ENTITY_CHARS}}}$'},
                    "category": {"type": "string", "enum": ["disease", "symptom", "medical procedure"]},
                },
                "required": ["entity", "category"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["annotations"],
    "additionalProperties": False,
}

#: What closes each structure, in order of preference: near the end of its token budget a guided
#: row takes the first of these sets that its grammar allows (tokens made only of those characters),
#: so the answer ends complete, never cut open. In JSON a quote comes first: inside a string
#: brackets are only more string.
CLOSING = {"dict": ("]}",), "json": ('"', "]}")}


def grammar_source(fmt: str) -> tuple[str, str]:
    """("ebnf", grammar) or ("json_schema", schema) for a prompt format that has a structure."""
    if fmt == "dict":
        return "ebnf", V2_GRAMMAR
    if fmt == "json":
        return "json_schema", json.dumps(V3_SCHEMA)
    raise ValueError(f"format {fmt!r} has no structure to guide decoding into (dict or json)")
