"""Outputs that once broke or stalled the scoring (issue 20), shared by the tests and bench/parse_worst.py."""

from __future__ import annotations

import unicodedata

KB100 = 100_000


def adversarial_outputs(note: str) -> dict[str, str]:
    """Name → output: each a degenerate answer a small model can write, up to 100 KB."""
    words = note.split() or ["fiebre"]
    long_item = " ".join(words[i % len(words)] for i in range(3_000)).replace(",", " ")
    return {
        "v3 cut in whitespace": '{"annotations": [{"entity": ' + " " * 400,
        "100 KB of whitespace": '{"annotations": [{"entity": ' + " " * KB100,
        "nested 1,100 deep": '{"annotations": ' + "[" * 1_100 + "]" * 1_100 + "}",
        "100 KB of braces": "{" * KB100,
        "100 KB of brackets": "[" * (KB100 // 2) + "]" * (KB100 // 2),
        "repeated keys": "a: [" * (KB100 // 4),
        "repeated entity keys": '{"entity": "' * (KB100 // 12),
        "repeated words": ("fiebre " * (KB100 // 7))[:KB100],
        "one item of 3,000 words": "{diseases: [" + long_item + "]}",
        "the note itself": note,
        "the note in NFD": unicodedata.normalize("NFD", note),
        "Spanish keys": "{enfermedades: [neumonía], síntomas: [fiebre; tos], procedimientos: [biopsia]}",
        "Table 7 v3": "{ annotations:[ {entity: sub-Saharan origin, category: not applicable}, {entity:sweating} ] }",
    }
