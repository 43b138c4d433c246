"""CoNLL (token<TAB>tag) and JSONL (text + spans) exports of a corpus."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from nerfleet.evaluation.corpus import Document
from nerfleet.evaluation.spans import spans_to_iob, tokenize_for_spans


def write_conll(documents: Iterable[Document], out: TextIO) -> None:
    for doc in documents:
        out.write(f"-DOCSTART- {doc.doc_id}\tO\n\n")
        tokens = tokenize_for_spans(doc.text, doc.spans)
        for tok, tag in zip(tokens, spans_to_iob(tokens, doc.spans)):
            out.write(f"{tok.text}\t{tag}\n")
        out.write("\n")


def write_jsonl(documents: Iterable[Document], out: TextIO) -> None:
    for doc in documents:
        spans = [
            {"start": s.start, "end": s.end, "label": s.label, "text": doc.text[s.start : s.end]} for s in doc.spans
        ]
        out.write(json.dumps({"doc_id": doc.doc_id, "split": doc.split, "text": doc.text, "spans": spans}) + "\n")
