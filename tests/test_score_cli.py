import json
import re

import pytest
from typer.testing import CliRunner

from nerfleet.cli import app

runner = CliRunner()


@pytest.fixture
def built(home):
    assert runner.invoke(app, ["corpus", "build", "demo"]).exit_code == 0


def write(tmp_path, lines):
    path = tmp_path / "outputs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_json_shape_and_report_files(built, tmp_path):
    lines = [
        json.dumps({"doc_id": "en-demo-001", "model": "m1", "prompt": p, "output": out})
        for p, out in [
            ("v1", "Diseases: renal hydatid disease. Symptoms: fever, sweating"),
            (
                "v2",
                "{diseases: [renal hydatid disease], symptoms: [fever; sweating], "
                "medical procedures: [renal ultrasound]}",
            ),
            ("v3", '{"annotations": [{"entity": "fever", "category": "symptom"}]}'),
        ]
    ]
    out = tmp_path / "report"
    result = runner.invoke(app, ["score", str(write(tmp_path, lines)), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert set(scores["strategy1"]["m1"]) == {"v1", "v2", "v3"}
    assert set(scores["strategy2"]["m1"]) == {"v2", "v3"}
    assert set(scores["strategy2"]["m1"]["v2"]) == {"DISEASE", "SYMPTOM", "PROCEDURE", "micro", "macro"}
    assert scores["parse_ratio"]["m1"]["v2"]["strict"] == 1.0
    assert scores["documents"] == 1
    assert scores["strategy2"]["m1"]["v2"]["micro"]["precision"] == 1.0
    for name in ("report.txt", "scores.json", "table3.csv", "table4.csv", "table5.csv", "f1.png"):
        assert (out / name).stat().st_size > 0
    text = runner.invoke(app, ["score", str(write(tmp_path, lines))]).stdout
    assert "Table 3" in text and "Table 4" in text and "Table 5" in text


@pytest.mark.parametrize(
    "bad,message",
    [
        ("not json", "line 2: not JSON: Expecting value at column 1"),
        (
            '{"doc_id": "en-demo-001", "model": "m", "prompt": "v1", "output": "a\tb"}',
            "line 2: not JSON: Invalid control character at column 69 (escape tabs, newlines and control characters",
        ),
        (json.dumps({"doc_id": "en-demo-001", "model": "m"}), "line 2: missing field prompt, output"),
        (json.dumps({"doc_id": "nope", "model": "m", "prompt": "v1", "output": ""}), "line 2: unknown document 'nope'"),
    ],
)
def test_bad_lines_name_the_line_and_score_nothing(built, tmp_path, bad, message):
    good = json.dumps({"doc_id": "en-demo-001", "model": "m", "prompt": "v1", "output": "fever"})
    result = runner.invoke(app, ["score", str(write(tmp_path, [good, bad])), "--json"])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_report_shows_table6_and_comparison():
    from nerfleet.evaluation.report import render_text

    scores = {
        "strategy1": {"m": {"v1": {"precision": 0.9, "recall": 0.4, "f1": 0.55}}},
        "strategy2": {
            "m": {
                "v2": {
                    k: {"precision": 0.5, "recall": 0.2, "f1": 0.3, "support": 3}
                    for k in ("DISEASE", "SYMPTOM", "PROCEDURE", "micro")
                }
            }
        },
        "parse_ratio": {"m": {"v2": {"lenient": 1.0, "strict": 0.5}}},
        "documents": 3,
        "params": {"match": {"mode": "partial", "threshold": 0.5}},
    }
    text = render_text(scores, {"minilm": {"precision": 0.5, "recall": 0.6, "f1": 0.545}})
    assert "Table 6" in text and "minilm" in text
    assert "Best zero-shot cell vs encoders: m v2 (strategy2)" in text and "0.245" in text


def _scores(lenient_m: float, f1_m: float) -> dict:
    cell = {"precision": f1_m, "recall": f1_m, "f1": f1_m}
    return {
        "strategy1": {"m": {"v1": cell}, "echo": {"v1": {"f1": 0.99}}},
        "strategy2": {"m": {"v2": {"micro": cell}}, "echo": {"v2": {"micro": {"f1": 0.0}}}},
        "parse_ratio": {"m": {"v2": {"lenient": lenient_m, "strict": 0.0}}, "echo": {"v2": {"lenient": 0.0}}},
        "calibration": ["echo"],
    }


def test_the_plot_marks_strategy_2_bars_with_no_parsed_output():
    from nerfleet.evaluation.report import f1_series

    models, series, unparsed = f1_series(_scores(0.0, 0.0))
    assert models == ["m", "echo"]
    assert [label for label, _ in series] == ["S1 v1", "S2 v2"]
    assert unparsed == [(1, 0), (1, 1)]  # series S2 v2: the model's bar and the echo row's
    assert f1_series(_scores(0.5, 0.2))[2] == [(1, 1)]  # an answer parsed: only the echo row is marked


def test_the_demo_explains_zeros_in_tables_4_and_5_only_when_nothing_parsed():
    from nerfleet.demo import why_structured_tables_are_empty

    assert why_structured_tables_are_empty(_scores(0.0, 0.0)).startswith("Tables 4 and 5 are zeros because m wrote")
    assert why_structured_tables_are_empty(_scores(0.5, 0.2)) is None


def test_report_csvs_load_as_clean_tables(built, tmp_path):
    """metrics.csv is long form (one row per strategy × model × prompt × category × metric, every
    cell filled where it applies); the table CSVs have a named column each and the model on every row."""
    import csv

    lines = [
        json.dumps({"doc_id": "en-demo-001", "model": m, "prompt": p, "output": "fever; renal hydatid disease"})
        for m in ("m1", "m2")
        for p in ("v1", "v2", "v3")
    ]
    out = tmp_path / "report"
    assert runner.invoke(app, ["score", str(write(tmp_path, lines)), "--out", str(out)]).exit_code == 0
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {
        "strategy", "model", "prompt", "category", "metric", "value", "ci_low", "ci_high", "n", "calibration",
    }  # fmt: skip
    keys = [(r["strategy"], r["model"], r["prompt"], r["category"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))  # one row per number
    assert all(r["model"] and r["strategy"] and r["metric"] and 0 <= float(r["value"]) <= 1 for r in rows)
    assert {r["model"] for r in rows} >= {"m1", "m2", "echo", "oracle"}
    for name in ("table3.csv", "table4.csv", "table5.csv"):
        with (out / name).open(newline="") as fh:
            header, *body = list(csv.reader(fh))
        assert all(h.strip() for h in header), f"{name}: an unnamed column"
        assert body and all(len(r) == len(header) and r[0] for r in body), f"{name}: a row without its model"


def test_a_line_that_is_not_utf8_is_named_with_its_line_and_column(built, tmp_path):
    good = json.dumps({"doc_id": "en-demo-001", "model": "m", "prompt": "v1", "output": "fever"}).encode()
    path = tmp_path / "outputs.jsonl"
    path.write_bytes(good + b'\n{"doc_id": "caf\xe9"}\n')
    result = runner.invoke(app, ["score", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path}: line 2, column 16: not UTF-8 (byte 0xe9); re-encode the file as UTF-8"
    )


def test_the_terminal_report_is_rich_tables_with_every_number_whole(built, tmp_path, monkeypatch):
    """`score` prints rich tables (box rules, the calibration rows below a rule), as wide as they
    need on a narrow terminal: every number of the report file is on screen, none cut to '…'."""
    monkeypatch.setenv("COLUMNS", "60")
    lines = [
        json.dumps({"doc_id": "en-demo-001", "model": m, "prompt": p, "output": "fever; renal hydatid disease"})
        for m in ("a-model-with-a-long-name", "m2")
        for p in ("v1", "v2", "v3")
    ]
    out = tmp_path / "report"
    result = runner.invoke(app, ["score", str(write(tmp_path, lines)), "--out", str(out)])
    assert result.exit_code == 0
    assert "┃" in result.stdout and "…" not in result.stdout
    plain = (out / "report.txt").read_text()
    numbers = set(re.findall(r"\d\.\d{3}|\d\.\d\d–\d\.\d\d", plain))
    assert numbers and all(n in result.stdout for n in numbers)
