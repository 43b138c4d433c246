"""Reads model outputs in the ``nerfleet score`` JSONL format: one response per line."""

from __future__ import annotations

import json
from collections.abc import Container
from pathlib import Path

from nerfleet.evaluation.corpus_reader import decode_utf8
from nerfleet.evaluation.scoring import Response

FIELDS = ("doc_id", "model", "prompt", "output")


class OutputsError(ValueError):
    """A bad line in an outputs file: the message names the file and line."""


def read_outputs(path: Path, known_docs: Container[str]) -> list[Response]:
    """All lines or nothing: the first bad line raises with its number.

    A second line for the same (doc_id, model, prompt) is refused, naming both lines:
    scoring both would count that document twice.
    """
    responses = []
    first_line: dict[tuple[str, str, str], int] = {}
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}: line {lineno}"
            line = decode_utf8(raw, f"{path}:", OutputsError, first_line=lineno)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = exc.msg.removesuffix(" at")  # json's "Invalid control character at"
                hint = " (escape tabs, newlines and control characters in strings)" if "control" in problem else ""
                raise OutputsError(f"{where}: not JSON: {problem} at column {exc.colno}{hint}") from None
            if not isinstance(obj, dict):
                raise OutputsError(f"{where}: not a JSON object")
            missing = [f for f in FIELDS if f not in obj]
            if missing:
                raise OutputsError(f"{where}: missing field {', '.join(missing)}")
            for f in ("doc_id", "model", "prompt"):
                if not isinstance(obj[f], str) or not obj[f]:
                    raise OutputsError(f"{where}: field {f} must be a non-empty string")
            if obj["output"] is not None and not isinstance(obj["output"], str):
                raise OutputsError(f"{where}: field output must be a string or null")
            if obj["doc_id"] not in known_docs:
                raise OutputsError(f"{where}: unknown document {obj['doc_id']!r} (not in the corpus)")
            key = (obj["doc_id"], obj["model"], obj["prompt"])
            if key in first_line:
                raise OutputsError(
                    f"{where}: duplicate of line {first_line[key]} "
                    f"(doc_id {key[0]!r}, model {key[1]!r}, prompt {key[2]!r})"
                )
            first_line[key] = lineno
            responses.append(Response(obj["doc_id"], obj["model"], obj["prompt"], obj["output"], obj.get("error")))
    if not responses:
        raise OutputsError(f"{path}: no response lines")
    return responses
