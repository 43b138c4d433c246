"""Prompts are data: TOML files with a name, an output format and a template.

A prompt's identity is the sha256 of its template text, so results of two
wordings never mix under one name.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nerfleet.evaluation.grammars import grammar_source
from nerfleet.registry import Registry

SLOT = "{clinical_text}"
FORMATS = ("none", "dict", "json")


#: A condition of its own: the same prompt text, decoding constrained to the structure it asks for.
GUIDED = "+guided"


@dataclass(frozen=True)
class Prompt:
    name: str
    format: str  # none | dict | json: which structure strategy 2 looks for
    template: str
    #: Decoding constrained to ``format`` (the v2 dictionary grammar / the v3 JSON schema).
    guided: bool = False

    @property
    def hash(self) -> str:
        """The template's sha256; a guided condition's adds its grammar (its jobs are other jobs,
        and a changed grammar is a changed condition)."""
        text = self.template + ("\x00guided:" + "\x00".join(grammar_source(self.format)) if self.guided else "")
        return hashlib.sha256(text.encode()).hexdigest()

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


def _builtin(name: str) -> Callable[[], Prompt]:
    def read() -> Prompt:
        text = resources.files("nerfleet.evaluation").joinpath("prompts", f"{name}.toml").read_text("utf-8")
        return _parse(text, name)

    return read


#: The named prompts, each a loader (the paper's three ship as TOML files in the package); add your
#: own with ``PROMPTS.register("mine")(lambda: Prompt(...))`` or pass a .toml path instead.
PROMPTS: Registry[Callable[[], Prompt]] = Registry("prompt", {name: _builtin(name) for name in ("v1", "v2", "v3")})


def load_prompt(ref: str) -> Prompt:
    """A registered name (v1, v2, v3 built in), the path of a prompt TOML file, or either with ``+guided``."""
    if ref.endswith(GUIDED):
        base = load_prompt(ref.removesuffix(GUIDED))
        if base.format == "none":
            raise ValueError(f"prompt {ref!r}: {base.name} asks for no structure, so there is nothing to guide")
        return Prompt(base.name + GUIDED, base.format, base.template, guided=True)
    if ref in PROMPTS:
        return PROMPTS[ref]()
    path = Path(ref)
    if path.suffix == ".toml" and path.is_file():
        return _parse(path.read_text("utf-8"), str(path))
    raise ValueError(f"unknown prompt {ref!r}: use one of {', '.join(PROMPTS)} or a path to a .toml prompt file")


def prompt_format(ref: str) -> str:
    """The structure a prompt asked for; "none" for a name that is neither built in nor a TOML file."""
    base = ref.removesuffix(GUIDED)
    if base in PROMPTS or (base.endswith(".toml") and Path(base).is_file()):
        return load_prompt(base).format
    return "none"
