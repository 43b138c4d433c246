"""CoNLL (token<TAB>tag) and JSONL (text + spans) exports of a corpus."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from nerfleet.evaluation.corpus import Document
from nerfleet.evaluation.corpus_reader import OFFICIAL_LABELS
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


TSV_HEADER = "filename\tann_id\tlabel\tstart_span\tend_span\ttext"


def mention_tsv_line(filename: str, ann_id: str, text: str, span) -> str:
    """One mention in the official gold files' layout: their labels (ENFERMEDAD, SINTOMA,
    PROCEDIMIENTO), so the BSC scorers read it; a mention's line breaks and tabs become spaces."""
    mention = " ".join(text[span.start : span.end].split())
    return f"{filename}\t{ann_id}\t{OFFICIAL_LABELS[span.label]}\t{span.start}\t{span.end}\t{mention}"
