"""Prompts are data: TOML files with a name, an output format and a template.

A prompt's identity is the sha256 of its template text, so results of two
wordings never mix under one name.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SLOT = "{clinical_text}"
FORMATS = ("none", "dict", "json")
BUILTIN = ("v1", "v2", "v3")


@dataclass(frozen=True)
class Prompt:
    name: str
    format: str  # none | dict | json: which structure strategy 2 looks for
    template: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    def render(self, clinical_text: str) -> str:
        return self.template.replace(SLOT, clinical_text)


def _parse(text: str, origin: str) -> Prompt:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"prompt {origin}: not valid TOML: {exc}") from None
    for key in ("name", "template"):
        if not isinstance(data.get(key), str):
            raise ValueError(f"prompt {origin}: field {key!r} missing or not a string")
    fmt = data.get("format", "none")
    if fmt not in FORMATS:
        raise ValueError(f"prompt {origin}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if SLOT not in data["template"]:
        raise ValueError(f"prompt {origin}: template has no {SLOT} slot")
    return Prompt(data["name"], fmt, data["template"])


def load_prompt(ref: str) -> Prompt:
    """A built-in name (v1, v2, v3) or the path of a prompt TOML file."""
    if ref in BUILTIN:
        text = resources.files("nerfleet.evaluation").joinpath("prompts", f"{ref}.toml").read_text("utf-8")
        return _parse(text, ref)
    path = Path(ref)
    if path.suffix == ".toml" and path.is_file():
        return _parse(path.read_text("utf-8"), str(path))
    raise ValueError(f"unknown prompt {ref!r}: use one of {', '.join(BUILTIN)} or a path to a .toml prompt file")


def prompt_format(ref: str) -> str:
    """The structure a prompt asked for; "none" for a name that is neither built in nor a TOML file."""
    if ref in BUILTIN or (ref.endswith(".toml") and Path(ref).is_file()):
        return load_prompt(ref).format
    return "none"
