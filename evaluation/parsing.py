"""Finds the structure a prompt asked for in a model's raw output (strategy 2).

Parsing only: raw text → (entity, category) pairs. Aligning them to the document
is :mod:`nerfleet.evaluation.scoring`'s job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

CATEGORY_MAP = {
    "disease": "DISEASE",
    "diseases": "DISEASE",
    "disorder": "DISEASE",
    "disorders": "DISEASE",
    "symptom": "SYMPTOM",
    "symptoms": "SYMPTOM",
    "sign": "SYMPTOM",
    "signs": "SYMPTOM",
    "finding": "SYMPTOM",
    "findings": "SYMPTOM",
    "medical procedure": "PROCEDURE",
    "medical procedures": "PROCEDURE",
    "procedure": "PROCEDURE",
    "procedures": "PROCEDURE",
}
DICT_KEYS = {"diseases", "symptoms", "medical procedures"}
_PLACEHOLDER = re.compile(r"^(list of [\w ]+|entity\d*|\.\.\.|…|none|n/?a|null)$", re.I)


@dataclass
class Parsed:
    #: (entity text, category) with category one of DISEASE / SYMPTOM / PROCEDURE.
    entities: list[tuple[str, str]] = field(default_factory=list)
    #: Entity items found in the requested format, before category mapping.
    items: int = 0
    #: Items dropped because their category is not one of the three ("not applicable").
    dropped: int = 0
    #: Strictly valid: JSON that parses (json) / the exact dictionary shape (dict).
    strict: bool = False

    @property
    def lenient(self) -> bool:
        """The response presented at least one entity in the requested format (Table 5)."""
        return self.items > 0


def map_category(raw: str) -> str | None:
    words = raw.lower().replace("_", " ").replace("-", " ").strip(" \"'*:").split()
    # "Here are the diseases" → "diseases": try the last two words, then the last one.
    for tail in (words, words[-2:], words[-1:]):
        found = CATEGORY_MAP.get(" ".join(tail))
        if found:
            return found
    return None


def _clean_item(item: str) -> str:
    return item.strip().strip("\"'`*").strip().rstrip(".").strip()


def _keep(item: str) -> bool:
    return bool(item) and not _PLACEHOLDER.match(item)


# ---------------------------------------------------------------- v2: the dictionary
_KEY_LIST = re.compile(
    r"""(?P<key>["']?(?P<name>[A-Za-z][A-Za-z _-]{0,40}?)["']?)\s*:\s*\[(?P<body>[^\[\]]*)\]""",
    re.S,
)
_QUOTED = re.compile(r""""([^"]*)"|'([^']*)'""")


def _split_items(body: str) -> list[str]:
    quoted = [a or b for a, b in _QUOTED.findall(body)]
    if quoted and not _QUOTED.sub("", body).strip(" ,;\n\t"):
        items = quoted
    elif ";" in body:
        items = body.split(";")
    else:
        items = body.split(",")
    return [c for c in (_clean_item(i) for i in items) if _keep(c)]


def parse_dict(output: str) -> Parsed:
    result = Parsed()
    for m in _KEY_LIST.finditer(output):
        items = _split_items(m.group("body"))
        category = map_category(m.group("name"))
        result.items += len(items)
        if category is None:
            result.dropped += len(items)
            continue
        result.entities.extend((item, category) for item in items)
    result.strict = result.items > 0 and any(_strict_dict_block(b) for b in re.findall(r"\{[^{}]*\}", output))
    return result


def _strict_dict_block(block: str) -> bool:
    keys = []
    rest = _KEY_LIST.sub(lambda m: keys.append(m.group("name").lower().strip()) or "", block[1:-1])
    return sorted(keys) == sorted(DICT_KEYS) and not rest.replace(",", "").strip()


# ---------------------------------------------------------------- v3: the JSON annotations
_VALUE = r"""(?:"[^"]*"|'[^']*'|[^,{}\[\]"']*)"""
_ITEM = re.compile(
    r"""\{\s*["']?entity["']?\s*:\s*(?P<ent>""" + _VALUE + r""")\s*"""
    r"""(?:,\s*["']?(?:category|type|label)["']?\s*:\s*(?P<cat>""" + _VALUE + r"""))?\s*,?\s*\}""",
    re.I | re.S,
)


def _strict_json(output: str) -> list[dict] | None:
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", output):
        try:
            obj, _ = decoder.raw_decode(output, m.start())
        except ValueError:
            continue
        anns = obj.get("annotations") if isinstance(obj, dict) else None
        if (
            isinstance(anns, list)
            and anns
            and all(
                isinstance(a, dict) and isinstance(a.get("entity"), str) and isinstance(a.get("category"), str)
                for a in anns
            )
        ):
            return anns
    return None


def parse_json(output: str) -> Parsed:
    result = Parsed()
    strict_items = _strict_json(output)
    if strict_items is not None:
        pairs = [(a["entity"], a["category"]) for a in strict_items]
    else:
        pairs = [(m.group("ent"), m.group("cat") or "") for m in _ITEM.finditer(output)]
    for ent, cat in pairs:
        ent = _clean_item(ent)
        if not _keep(ent):
            continue
        result.items += 1
        category = map_category(_clean_item(cat))
        if category is None:
            result.dropped += 1
        else:
            result.entities.append((ent, category))
    result.strict = strict_items is not None and result.items > 0
    return result


PARSERS = {"dict": parse_dict, "json": parse_json}


def parse(output: str, fmt: str) -> Parsed | None:
    """The structure for a prompt format; None for a prompt that asked for none (v1)."""
    parser = PARSERS.get(fmt)
    return parser(output) if parser else None
