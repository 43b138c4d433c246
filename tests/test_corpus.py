import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nerfleet.cli import app
from nerfleet.evaluation.corpus import build_corpus, read_test_ids
from nerfleet.evaluation.corpus_reader import CorpusError, read_corpus
from nerfleet.evaluation.spans import iob_to_spans, spans_to_iob, tokenize_for_spans
from tests.conftest import DEMO_CORPUS, SHARED_DATA

runner = CliRunner()


def copy_demo(tmp_path: Path) -> Path:
    dst = tmp_path / "release"
    shutil.copytree(DEMO_CORPUS, dst)
    return dst


def test_both_tsv_header_variants():
    dis = read_corpus(DEMO_CORPUS / "distemist")  # filename mark label off0 off1 span
    sym = read_corpus(DEMO_CORPUS / "symptemist")  # filename ann_id label start_span end_span text
    assert dis.name == "distemist" and {m.label for m in dis.mentions} == {"DISEASE"}
    assert sym.name == "symptemist" and {m.label for m in sym.mentions} == {"SYMPTOM"}
    m = dis.mentions[0]
    assert dis.texts[m.doc_id][m.start : m.end] == m.text


def test_brat_layout(tmp_path):
    folder = tmp_path / "medprocner" / "txt"
    folder.mkdir(parents=True)
    (folder / "d1.txt").write_text("Se realizó una ecografía abdominal y una TC.")
    (folder / "d1.ann").write_text(
        "T1\tPROCEDIMIENTO 15 34\tecografía abdominal\n#1\tAnnotatorNotes T1\tnota\nT2\tPROCEDIMIENTO 41 43\tTC\n"
    )
    corpus = read_corpus(tmp_path / "medprocner")
    assert [(m.start, m.end, m.label) for m in corpus.mentions] == [(15, 34, "PROCEDURE"), (41, 43, "PROCEDURE")]


def test_demo_corpus_overlaps_and_split():
    build = build_corpus(DEMO_CORPUS, test_ids=read_test_ids(DEMO_CORPUS / "test_ids.txt"))
    st = build.stats
    assert st["documents"] == 12 and st["test_documents"] == 4
    # The demo notes carry one overlap inside DISEASE and one across categories per side.
    assert st["overlaps_removed_within_category"]["DISEASE"] == 1
    assert sum(st["overlaps_removed_across_categories"].values()) == 2
    raw = sum(sum(v.values()) for v in st["mentions_raw"].values())
    kept = sum(sum(v.values()) for v in st["mentions"].values())
    removed = sum(st["overlaps_removed_within_category"].values()) + sum(
        st["overlaps_removed_across_categories"].values()
    )
    assert raw - removed == kept
    for doc in build.documents:
        for a, b in zip(doc.spans, doc.spans[1:]):
            assert a.end <= b.start


def test_split_is_deterministic_and_seeded():
    a = build_corpus(DEMO_CORPUS, seed=1)
    b = build_corpus(DEMO_CORPUS, seed=1)
    c = build_corpus(DEMO_CORPUS, seed=2)
    test = lambda build: sorted(d.doc_id for d in build.documents if d.split == "test")  # noqa: E731
    assert test(a) == test(b)
    assert len(test(a)) == round(12 * 90 / 1000) == 1
    assert a.source_hash != c.source_hash


def _break(release: Path, corpus: str, fn) -> None:
    tsv = next((release / corpus).glob("*.tsv"))
    lines = tsv.read_text().splitlines()
    lines[1] = fn(lines[1])
    tsv.write_text("\n".join(lines) + "\n")


BAD_INPUTS = {
    "missing txt": (lambda r: (r / "symptemist/txt/en-demo-001.txt").unlink(), "has no txt/en-demo-001.txt"),
    "offset past end": (
        lambda r: _break(r, "symptemist", lambda row: "\t".join(row.split("\t")[:3] + ["5000", "5010", "x"])),
        "past end of text",
    ),
    "text mismatch": (
        lambda r: _break(r, "distemist", lambda row: "\t".join(row.split("\t")[:5] + ["something else"])),
        "does not match file text",
    ),
    "unknown label": (
        lambda r: _break(r, "medprocner", lambda row: row.replace("PROCEDIMIENTO", "FARMACO")),
        "unknown label 'FARMACO'",
    ),
    "malformed row": (lambda r: _break(r, "medprocner", lambda row: row.split("\t")[0]), "malformed row"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error_and_nothing_written(case, tmp_path, home):
    release = copy_demo(tmp_path)
    damage, message = BAD_INPUTS[case]
    damage(release)
    result = runner.invoke(app, ["corpus", "build", str(release)])
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert message in err and "\n" not in err
    if case != "missing txt":
        assert "line 2" in err  # names the file's line
    stats = runner.invoke(app, ["corpus", "stats"])
    assert stats.exit_code == 2 and "no corpus" in stats.stderr


def test_lenient_skips_and_counts(tmp_path, home):
    release = copy_demo(tmp_path)
    _break(release, "medprocner", lambda row: row.replace("PROCEDIMIENTO", "FARMACO"))
    result = runner.invoke(app, ["corpus", "build", str(release), "--lenient"])
    assert result.exit_code == 0, result.output
    stats = json.loads(runner.invoke(app, ["corpus", "stats", "--json"]).stdout)
    assert stats["skipped_rows"] == 1


def test_rebuild_is_noop_and_change_is_new_version(tmp_path, home):
    release = copy_demo(tmp_path)
    first = runner.invoke(app, ["corpus", "build", str(release), "--name", "demo"])
    again = runner.invoke(app, ["corpus", "build", str(release), "--name", "demo"])
    assert "v1" in first.stdout and "unchanged" in again.stdout
    _break(release, "distemist", lambda row: row)  # rewrite without change: still the same
    tsv = release / "symptemist" / "symptemist_mentions.tsv"
    tsv.write_text("\n".join(tsv.read_text().splitlines()[:-1]) + "\n")  # drop one mention
    changed = runner.invoke(app, ["corpus", "build", str(release), "--name", "demo"])
    assert "demo v2" in changed.stdout and "built" in changed.stdout
    stats = json.loads(runner.invoke(app, ["corpus", "stats", "--json", "--corpus", "demo"]).stdout)
    assert stats["version"] == 2


def test_stats_json_and_exports(tmp_path, home):
    assert runner.invoke(app, ["corpus", "build", "demo"]).exit_code == 0
    stats = json.loads(runner.invoke(app, ["corpus", "stats", "--json"]).stdout)
    for key in ("documents", "train_documents", "test_documents", "mentions"):
        assert key in stats
    assert set(stats["mentions"]) == {"DISEASE", "SYMPTOM", "PROCEDURE"}
    table = runner.invoke(app, ["corpus", "stats"]).stdout
    assert "Table 1" in table and "distemist" in table
    conll = tmp_path / "c.conll"
    jsonl = tmp_path / "c.jsonl"
    assert runner.invoke(app, ["corpus", "export", str(conll)]).exit_code == 0
    assert runner.invoke(app, ["corpus", "export", str(jsonl), "--split", "test"]).exit_code == 0
    assert "\tB-DISEASE" in conll.read_text()
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        for s in row["spans"]:
            assert row["text"][s["start"] : s["end"]] == s["text"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no real corpus at {SHARED_DATA} (set NERFLEET_TEST_CORPUS)")
def test_real_corpus_counts_and_round_trip():
    build = build_corpus(SHARED_DATA)
    st = build.stats
    assert st["documents"] == 600
    assert sum(sum(v.values()) for v in st["mentions_raw"].values()) == 22_603
    assert all(sum(v.values()) > 0 for v in st["mentions"].values())
    for doc in build.documents:
        tokens = tokenize_for_spans(doc.text, doc.spans)
        assert iob_to_spans(tokens, spans_to_iob(tokens, doc.spans)) == doc.spans, doc.doc_id


def test_unknown_test_ids_is_an_error():
    with pytest.raises(CorpusError, match="unknown document ids"):
        build_corpus(DEMO_CORPUS, test_ids=["nope"])


def test_a_note_that_is_not_utf8_is_named_with_its_file_line_and_column(tmp_path):
    import shutil

    from nerfleet.evaluation.corpus import build_corpus
    from nerfleet.evaluation.corpus_reader import CorpusError
    from nerfleet.storage.corpus_store import bundled_corpus

    release = tmp_path / "release"
    shutil.copytree(bundled_corpus(), release)
    note = sorted((release / "symptemist" / "txt").glob("*.txt"))[0]
    note.write_bytes(b"first line\ncaf\xe1 con leche\n")
    with pytest.raises(CorpusError) as err:
        build_corpus(release)
    assert str(err.value) == (
        f"symptemist: {note} line 2, column 4: not UTF-8 (byte 0xe1); re-encode the file as UTF-8"
    )
    note.unlink()  # a mentions table that is not UTF-8 is named the same way
    tsv = release / "distemist" / "distemist_mentions.tsv"
    tsv.write_bytes(tsv.read_bytes() + b"bad\xff\n")
    with pytest.raises(CorpusError, match=r"distemist: .*\.tsv line \d+, column 4: not UTF-8 \(byte 0xff\)"):
        build_corpus(release)


def test_one_split_rule_the_folders_own_test_ids_by_name_or_by_path(home):
    from nerfleet.storage.corpus_store import build_and_save, bundled_corpus

    _, by_name = build_and_save("demo")
    _, by_path = build_and_save(bundled_corpus(), name="demo-by-path")
    wanted = {line.strip() for line in (bundled_corpus() / "test_ids.txt").read_text().splitlines() if line.strip()}

    def test_ids(build):
        return {d.doc_id for d in build.documents if d.split == "test"}

    assert test_ids(by_name) == test_ids(by_path) == wanted
