"""Finds the structure a prompt asked for in a model's raw output (strategy 2).

Parsing only: raw text → (entity, category) pairs. Aligning them to the document
is :mod:`nerfleet.evaluation.scoring`'s job.

A model's output is untrusted input, so every scan here is linear in its length:
no regular expression that can backtrack (brackets are paired in one pass, the few
patterns left use possessive quantifiers), JSON nesting bounded, at most
:data:`MAX_OUTPUT_CHARS` characters and :data:`MAX_JSON_ATTEMPTS` decodes per output.
One degenerate answer can never stall the aggregation of a whole run.
"""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nerfleet.evaluation.spans import LABELS
from nerfleet.registry import Registry

#: What of one output is parsed; an answer past this is a degenerate one (256–512 new tokens ≈ 2–4 KB).
MAX_OUTPUT_CHARS = 100_000
#: Characters one entity (or category) value may span.
MAX_ITEM_CHARS = 1_000
#: ``json`` decodes tried per output (candidates that start with ``{"annotations"`` first).
MAX_JSON_ATTEMPTS = 64
#: Deepest JSON nesting decoded; deeper candidates are skipped (json's C scanner recurses).
MAX_JSON_DEPTH = 64
#: Characters of a dictionary key read back from its colon.
MAX_KEY_CHARS = 40


def fold(text: str) -> str:
    """Case- and accent-free form of a name, for looking names up (not for matching spans)."""
    decomposed = unicodedata.normalize("NFD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


#: Category and key names a model may write, in English and Spanish, folded (see :func:`fold`).
#: Extend it with :func:`extend_category_names` (``nerfleet score --categories FILE``).
CATEGORY_NAMES: dict[str, str] = {
    fold(name): label
    for label, names in {
        "DISEASE": "disease diseases disorder disorders enfermedad enfermedades trastorno trastornos",
        "SYMPTOM": "symptom symptoms sign signs finding findings síntoma síntomas signo signos hallazgo hallazgos",
        "PROCEDURE": "procedure procedures procedimiento procedimientos",
    }.items()
    for name in names.split()
}
CATEGORY_NAMES.update(
    {
        fold(name): "PROCEDURE"
        for name in (
            "medical procedure",
            "medical procedures",
            "procedimiento médico",
            "procedimientos médicos",
            "procedimiento medico",
            "procedimientos medicos",
        )
    }
)
_PLACEHOLDER = re.compile(r"^(?:list of [\w ]++|entity\d*+|\.\.\.|…|none|n/?a|null)$", re.I)


def extend_category_names(names: Mapping[str, str]) -> None:
    """Add names (any case and accents) for the three categories, e.g. ``{"hallazgo": "SYMPTOM"}``."""
    for name, label in names.items():
        if label not in LABELS:
            raise ValueError(f"category name {name!r}: label {label!r} is not one of {', '.join(LABELS)}")
        CATEGORY_NAMES[fold(name).strip()] = label


def load_category_names(path) -> None:
    """Read a TOML table ``{DISEASE = ["…"], SYMPTOM = [...], PROCEDURE = [...]}`` into the names."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"category names {path}: {exc}") from None
    for label, names in data.items():
        if label not in LABELS or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"category names {path}: key {label!r} must be one of {', '.join(LABELS)} with a list")
        extend_category_names({n: label for n in names})


@dataclass
class Parsed:
    #: (entity text, category) with category one of DISEASE / SYMPTOM / PROCEDURE.
    entities: list[tuple[str, str]] = field(default_factory=list)
    #: Entity items found in the requested format, before category mapping.
    items: int = 0
    #: Items dropped because their category is not one of the three ("not applicable").
    dropped: int = 0
    #: The requested shape exactly (valid JSON with ``annotations`` / the three-key dictionary), whatever
    #: its items hold: a property of the format, apart from :attr:`lenient` (the paper's ratio).
    strict: bool = False

    @property
    def lenient(self) -> bool:
        """Table 5 as the paper defines it: at least one entity in the requested format.

        An entity counts once its category is one of the three: a list under a key that
        names no category (``Labs: [...]``) or items with no usable category are not entities.
        """
        return bool(self.entities)


def map_category(raw: str) -> str | None:
    words = fold(raw).replace("_", " ").replace("-", " ").strip(" \"'*:`").split()
    # "Here are the diseases" → "diseases": try the whole, the last two words, then the last one.
    for tail in (words, words[-2:], words[-1:]):
        found = CATEGORY_NAMES.get(" ".join(tail))
        if found:
            return found
    return None


def _clean_item(item: str) -> str:
    return item.strip().strip("\"'`*").strip().rstrip(".").strip()


def _keep(item: str) -> bool:
    return bool(item) and len(item) <= MAX_ITEM_CHARS and not _PLACEHOLDER.match(item)


def _prepare(output: str) -> str:
    return unicodedata.normalize("NFC", output[:MAX_OUTPUT_CHARS])


# ---------------------------------------------------------------- v2: the dictionary
_QUOTED = re.compile(r""""([^"]*+)"|'([^']*+)'""")
_BRACKETS = re.compile(r"[\[\]]")
_BRACES = re.compile(r"[{}]")


@dataclass(frozen=True)
class _KeyList:
    start: int  # where the key begins (its opening quote, if any)
    end: int  # after the closing bracket
    name: str
    body: str


def _key_before(text: str, colon: int, floor: int) -> tuple[int, str] | None:
    """The dictionary key that ends at ``text[colon] == ':'``: (its start, its name), read backwards."""
    i = colon - 1
    while i >= floor and i > colon - 1 - MAX_KEY_CHARS and text[i] in " \t":
        i -= 1
    if i >= floor and text[i] in "\"'":
        i -= 1
    end = i + 1
    while i >= floor and end - i <= MAX_KEY_CHARS and (text[i].isalpha() or text[i] in " _-"):
        i -= 1
    name = text[i + 1 : end].lstrip(" _-")
    if not name or not name[0].isalpha():
        return None
    start = end - len(name)
    if start - 1 >= floor and text[start - 1] in "\"'":
        start -= 1
    return start, name


def _key_lists(text: str) -> Iterator[_KeyList]:
    """Every ``key: [body]`` with a body holding no bracket, in one pass over the brackets."""
    brackets = [(m.start(), m.group()) for m in _BRACKETS.finditer(text)]
    floor = 0
    for (pos, ch), (nxt, nch) in zip(brackets, brackets[1:]):
        if ch != "[" or nch != "]":
            continue
        i = pos - 1
        while i >= floor and pos - i <= MAX_KEY_CHARS and text[i] in " \t\r\n":
            i -= 1
        if i < floor or text[i] != ":":
            continue
        key = _key_before(text, i, floor)
        if key is None:
            continue
        floor = nxt + 1
        yield _KeyList(key[0], nxt + 1, key[1], text[pos + 1 : nxt])


def _split_items(body: str) -> list[str]:
    quoted = [a or b for a, b in _QUOTED.findall(body)]
    if quoted and not _QUOTED.sub("", body).strip(" ,;\n\t"):
        items = quoted
    elif ";" in body:
        items = body.split(";")
    else:
        items = body.split(",")
    return [c for c in (_clean_item(i) for i in items) if _keep(c)]


def _braced_blocks(text: str) -> Iterator[str]:
    """``{…}`` blocks holding no brace, in one pass."""
    braces = [(m.start(), m.group()) for m in _BRACES.finditer(text)]
    for (pos, ch), (nxt, nch) in zip(braces, braces[1:]):
        if ch == "{" and nch == "}":
            yield text[pos : nxt + 1]


def _strict_dict_block(block: str) -> bool:
    inner = block[1:-1]
    found = list(_key_lists(inner))
    rest, last = [], 0
    for k in found:
        rest.append(inner[last : k.start])
        last = k.end
    rest.append(inner[last:])
    categories = sorted(map_category(k.name) or "?" for k in found)
    return categories == sorted(LABELS) and not "".join(rest).replace(",", "").strip()


def parse_dict(output: str) -> Parsed:
    output = _prepare(output)
    result = Parsed()
    for k in _key_lists(output):
        items = _split_items(k.body)
        category = map_category(k.name)
        result.items += len(items)
        if category is None:
            result.dropped += len(items)
            continue
        result.entities.extend((item, category) for item in items)
    result.strict = any(_strict_dict_block(b) for b in _braced_blocks(output))
    return result


# ---------------------------------------------------------------- v3: the JSON annotations
_ANNOTATIONS_START = re.compile(r"""\{\s*+["']annotations["']""", re.I)
_ENTITY_KEY = re.compile(r"""\b(?:entity|entidad)["']?\s*+:\s*+""", re.I)
_CATEGORY_KEY = re.compile(
    r"""\s*+["']?\s*+,?\s*+["']?(?:category|categor[íi]a|type|tipo|label|etiqueta)["']?\s*+:\s*+""", re.I
)
_BARE_VALUE = re.compile(r"""[^,{}\[\]"\n]{0,""" + str(MAX_ITEM_CHARS) + "}")


class _Nesting:
    """How deep the value opened at a ``{`` nests (brackets inside strings count too: conservative).

    One vectorised pass: the running bracket depth after every character; a candidate's
    depth is the highest point before the depth falls back below its start. Linear, so
    json's recursive decoder only ever sees candidates at most MAX_JSON_DEPTH deep.
    """

    def __init__(self, text: str):
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        step = np.isin(codes, (ord("{"), ord("["))).astype(np.int32) - np.isin(codes, (ord("}"), ord("]")))
        self.depth = np.cumsum(step)

    def of(self, start: int) -> int:
        base = self.depth[start] - 1
        after = self.depth[start:]
        closed = after <= base
        end = int(closed.argmax()) if closed.any() else len(after)
        return int(after[:end].max() - base) if end else 1


def _json_candidates(output: str) -> Iterator[int]:
    first = [m.start() for m in _ANNOTATIONS_START.finditer(output)]
    yield from first
    seen = set(first)
    pos = output.find("{")
    while pos != -1:
        if pos not in seen:
            yield pos
        pos = output.find("{", pos + 1)


def _strict_json(output: str) -> list[dict] | None:
    decoder = json.JSONDecoder()
    nesting = _Nesting(output) if "{" in output else None
    for attempts, start in enumerate(_json_candidates(output)):
        if attempts >= MAX_JSON_ATTEMPTS:
            break
        if nesting.of(start) > MAX_JSON_DEPTH:
            continue
        try:
            obj, _ = decoder.raw_decode(output, start)
        except (ValueError, RecursionError):
            continue
        anns = obj.get("annotations") if isinstance(obj, dict) else None
        if isinstance(anns, list) and all(
            isinstance(a, dict) and isinstance(a.get("entity"), str) and isinstance(a.get("category"), str)
            for a in anns
        ):
            return anns
    return None


def _value_at(text: str, pos: int) -> tuple[str, int]:
    """A quoted or bare value starting at ``pos``: (its text, where it ends)."""
    if pos < len(text) and text[pos] in "\"'":
        close = text.find(text[pos], pos + 1, pos + 1 + MAX_ITEM_CHARS)
        if close != -1:
            return text[pos + 1 : close], close + 1
        m = _BARE_VALUE.match(text, pos + 1)
        return m.group(), m.end()
    m = _BARE_VALUE.match(text, pos)
    return m.group(), m.end()


def _loose_items(output: str) -> Iterator[tuple[str, str]]:
    """``entity: X, category: Y`` pairs however they are quoted or bracketed (Table 7's v3 answer)."""
    for m in _ENTITY_KEY.finditer(output):
        entity, end = _value_at(output, m.end())
        cat = _CATEGORY_KEY.match(output, end)
        yield entity, (_value_at(output, cat.end())[0] if cat else "")


def parse_json(output: str) -> Parsed:
    output = _prepare(output)
    result = Parsed()
    strict_items = _strict_json(output)
    if strict_items is not None:
        pairs: Iterator[tuple[str, str]] | list[tuple[str, str]] = [(a["entity"], a["category"]) for a in strict_items]
    else:
        pairs = _loose_items(output)
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
    result.strict = strict_items is not None
    return result


PARSERS: Registry[Callable[[str], Parsed]] = Registry("structure", {"dict": parse_dict, "json": parse_json})


def parse(output: str, fmt: str) -> Parsed | None:
    """The structure for a prompt format; None for a prompt that asked for none (v1)."""
    parser = PARSERS.get(fmt)
    return parser(output) if parser else None
