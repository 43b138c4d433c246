"""Reads the official release layouts of DisTEMIST, SympTEMIST and MedProcNER.

A release folder holds one folder per corpus with ``txt/<doc_id>.txt`` and either
a mentions TSV (two header variants exist) or brat ``.ann`` files.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

#: Corpus-specific labels (Spanish gold and English/multilingual silver releases).
LABEL_MAP: dict[str, str] = {
    "ENFERMEDAD": "DISEASE",
    "DISEASE": "DISEASE",
    "SINTOMA": "SYMPTOM",
    "SÍNTOMA": "SYMPTOM",
    "SYMPTOM": "SYMPTOM",
    "SIGN": "SYMPTOM",
    "PROCEDIMIENTO": "PROCEDURE",
    "PROCEDURE": "PROCEDURE",
    "PROCEDIMIENTO_MEDICO": "PROCEDURE",
}

#: The label each category has in the official gold files (what the BSC scorers compare).
OFFICIAL_LABELS: dict[str, str] = {"DISEASE": "ENFERMEDAD", "SYMPTOM": "SINTOMA", "PROCEDURE": "PROCEDIMIENTO"}

#: Which category each known source corpus annotates (Table 1 columns).
SOURCE_CORPORA: dict[str, str] = {
    "distemist": "DISEASE",
    "symptemist": "SYMPTOM",
    "medprocner": "PROCEDURE",
}

TSV_HEADERS: dict[tuple[str, ...], tuple[int, int, int, int, int, int]] = {
    ("filename", "ann_id", "label", "start_span", "end_span", "text"): (0, 1, 2, 3, 4, 5),
    ("filename", "mark", "label", "off0", "off1", "span"): (0, 1, 2, 3, 4, 5),
}


class CorpusError(ValueError):
    """Bad corpus input: the message is one line naming corpus, file, line and problem."""


@dataclass(frozen=True, slots=True)
class Mention:
    doc_id: str
    start: int
    end: int
    label: str
    text: str
    source: str


@dataclass
class SourceCorpus:
    name: str
    texts: dict[str, str]
    mentions: list[Mention]
    skipped: list[str] = field(default_factory=list)


def decode_utf8(raw: bytes, where: str, error: type[ValueError], first_line: int = 1) -> str:
    """``raw`` as text; bytes that are not UTF-8 raise ``error`` naming ``where``, the line and the column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start]
        raise error(
            f"{where} line {line}, column {column}: not UTF-8 (byte 0x{byte:02x}); re-encode the file as UTF-8"
        ) from None


def read_utf8(name: str, path: Path) -> str:
    """A corpus file's text (a bad byte is a :class:`CorpusError` naming corpus, file, line, column)."""
    return decode_utf8(path.read_bytes(), f"{name}: {path}", CorpusError)


def _fail(msg: str, lenient: bool, skipped: list[str]) -> None:
    if not lenient:
        raise CorpusError(msg)
    skipped.append(msg)


def _lang_dir(folder: Path, lang: str | None) -> Path:
    if lang and (folder / lang).is_dir():
        return folder / lang
    return folder


def _doc_filter(doc_id: str, lang: str | None) -> bool:
    """Multilingual releases prefix ids with a language (``en-S0210…``)."""
    if not lang:
        return True
    prefix = doc_id.split("-", 1)[0]
    return not (len(prefix) == 2 and prefix.isalpha()) or prefix == lang


def find_corpora(release: Path, lang: str | None = None) -> list[Path]:
    """Folders under ``release`` that look like a corpus (have ``txt/``)."""
    release = Path(release)
    if not release.is_dir():
        raise CorpusError(f"{release}: not a folder")
    candidates = [release] if (release / "txt").is_dir() else sorted(p for p in release.iterdir() if p.is_dir())
    found = []
    for cand in candidates:
        cand = _lang_dir(cand, lang)
        if (cand / "txt").is_dir():
            found.append(cand)
    if not found:
        raise CorpusError(f"{release}: no corpus folder with a txt/ subfolder found")
    return found


def _source_name(folder: Path) -> str:
    parts = [p.lower() for p in folder.parts]
    for part in reversed(parts):
        for known in SOURCE_CORPORA:
            if known in part:
                return known
    return folder.name.lower()


def read_corpus(folder: Path, lang: str | None = None, lenient: bool = False) -> SourceCorpus:
    folder = Path(folder)
    name = _source_name(folder)
    texts = {p.stem: read_utf8(name, p) for p in sorted((folder / "txt").glob("*.txt")) if _doc_filter(p.stem, lang)}
    skipped: list[str] = []
    tsvs = sorted(folder.glob("*.tsv"))
    if tsvs:
        rows = [r for tsv in tsvs for r in _read_tsv(name, tsv, lenient, skipped)]
    else:
        anns = sorted((folder / "txt").glob("*.ann")) or sorted(folder.glob("**/*.ann"))
        if not anns:
            raise CorpusError(f"{name}: {folder}: neither a mentions .tsv nor brat .ann files")
        rows = [r for ann in anns for r in _read_ann(name, ann, lenient, skipped)]
    mentions = []
    for where, doc_id, label, start, end, span_text in rows:
        if not _doc_filter(doc_id, lang):
            continue
        mention = _check(name, where, doc_id, label, start, end, span_text, texts, lenient, skipped)
        if mention is not None:
            mentions.append(mention)
    return SourceCorpus(name, texts, mentions, skipped)


Row = tuple[str, str, str, int, int, str]


def _read_tsv(name: str, path: Path, lenient: bool, skipped: list[str]) -> list[Row]:
    rows: list[Row] = []
    with io.StringIO(read_utf8(name, path), newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) not in TSV_HEADERS:
            raise CorpusError(
                f"{name}: {path.name} line 1: unknown header {header!r}; expected one of "
                + " | ".join(" ".join(h) for h in TSV_HEADERS)
            )
        cols = TSV_HEADERS[tuple(h.strip() for h in header)]
        for lineno, row in enumerate(reader, start=2):
            where = f"{name}: {path.name} line {lineno}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 6:
                _fail(f"{where}: malformed row, {len(row)} columns instead of 6", lenient, skipped)
                continue
            try:
                start, end = int(row[cols[3]]), int(row[cols[4]])
            except ValueError:
                _fail(f"{where}: offsets {row[cols[3]]!r} {row[cols[4]]!r} are not integers", lenient, skipped)
                continue
            rows.append((where, row[cols[0]].strip(), row[cols[2]].strip(), start, end, row[cols[5]]))
    return rows


def _read_ann(name: str, path: Path, lenient: bool, skipped: list[str]) -> list[Row]:
    rows: list[Row] = []
    for lineno, line in enumerate(read_utf8(name, path).splitlines(), start=1):
        if not line.startswith("T"):
            continue  # notes, relations, normalisations
        where = f"{name}: {path.name} line {lineno}"
        parts = line.split("\t")
        if len(parts) < 3:
            _fail(f"{where}: malformed brat line", lenient, skipped)
            continue
        try:
            label, offsets = parts[1].split(" ", 1)
            pieces = [tuple(int(x) for x in frag.split()) for frag in offsets.split(";")]
            start, end = pieces[0][0], pieces[-1][1]
        except (ValueError, IndexError):
            _fail(f"{where}: malformed brat offsets {parts[1]!r}", lenient, skipped)
            continue
        text = parts[2] if len(pieces) == 1 else None
        rows.append((where, path.stem, label, start, end, text if text is not None else "\0discontinuous"))
    return rows


def _check(
    name: str,
    where: str,
    doc_id: str,
    label: str,
    start: int,
    end: int,
    span_text: str,
    texts: dict[str, str],
    lenient: bool,
    skipped: list[str],
) -> Mention | None:
    category = LABEL_MAP.get(label.upper())
    if category is None:
        _fail(f"{where}: unknown label {label!r} (known: {', '.join(sorted(LABEL_MAP))})", lenient, skipped)
        return None
    text = texts.get(doc_id)
    if text is None:
        _fail(f"{where}: document {doc_id!r} has no txt/{doc_id}.txt", lenient, skipped)
        return None
    if not 0 <= start < end:
        _fail(f"{where}: document {doc_id}: bad offsets {start}-{end}", lenient, skipped)
        return None
    if end > len(text):
        _fail(f"{where}: document {doc_id}: offset {end} past end of text ({len(text)} chars)", lenient, skipped)
        return None
    found = text[start:end]
    if span_text != "\0discontinuous" and " ".join(found.split()) != " ".join(span_text.split()):
        _fail(
            f"{where}: document {doc_id}: span text {span_text!r} does not match file text {found!r}", lenient, skipped
        )
        return None
    # Trim whitespace at the edges so the span starts and ends on a token.
    lstrip = len(found) - len(found.lstrip())
    rstrip = len(found) - len(found.rstrip())
    return Mention(doc_id, start + lstrip, end - rstrip, category, text[start + lstrip : end - rstrip], name)
