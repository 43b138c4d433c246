"""Paper-shaped reports (Tables 3–6) with intervals and calibration rows: text, CSV, JSON, PNG.

Every P/R/F cell is printed with its bootstrap 95% interval; ``echo`` and ``oracle`` rows
(:mod:`nerfleet.evaluation.calibration`) close each table, below a rule, so a reader sees the
floor and the ceiling of the table's own definition next to the models.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATEGORY_ROWS = (("DISEASE", "DISEASE"), ("PROCEDURE", "PROCEDURE"), ("SYMPTOM", "SYMPTOM"), ("micro", "micro avg"))
_PRF = ("precision", "recall", "f1")


def _f(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def _ci(c: dict | None, key: str) -> str:
    ci = (c or {}).get("ci") or {}
    lo_hi = ci.get(key)
    return f"{lo_hi[0]:.2f}–{lo_hi[1]:.2f}" if lo_hi else "-"


def _prompts(block: dict) -> list[str]:
    return sorted({p for cells in block.values() for p in cells})


def model_order(block: dict, calibration: list[str]) -> list[str]:
    """The models, then the calibration rows (echo, oracle) last."""
    return sorted(m for m in block if m not in calibration) + [m for m in calibration if m in block]


@dataclass
class TextTable:
    """One table of a report, as text cells: the report file writes it as a plain grid, the CLI
    through ``rich``. The first two columns (model, prompt or category) are labels, the rest
    numbers; a rule goes before row ``rule_before`` (the calibration rows)."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    rule_before: int | None = None

    def text(self) -> str:
        widths = [max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))]

        def line(r: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        body = [line(r) for r in self.rows]
        if self.rule_before is not None and 0 < self.rule_before < len(body):
            body.insert(self.rule_before, "·" * len(line(self.header)))
        out = [self.title, line(self.header), "-" * len(line(self.header)), *body]
        if self.note:
            out.append(self.note)
        return "\n".join(out)


def _prf_cells(c: dict | None) -> list[str]:
    return [_f(c["precision"]), _f(c["recall"]), _f(c["f1"]), _ci(c, "f1")] if c else ["-"] * 4


def _calibration_rule(models: list[str], calibration: list[str], rows_per_model: int = 1) -> int | None:
    real = [m for m in models if m not in calibration]
    return len(real) * rows_per_model if real and len(real) < len(models) else None


def table3_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores["strategy1"]
    prompts = _prompts(block)
    header = ["Model", "n"] + [f"{p} {m}" for p in prompts for m in ("P", "R", "F", "F 95% CI")]
    rows = []
    for model in model_order(block, scores.get("calibration", [])):
        n = {str(c.get("n")) for c in block[model].values() if c.get("n") is not None}
        cells = [x for p in prompts for x in _prf_cells(block[model].get(p))]
        rows.append([model, "/".join(sorted(n)) or ""] + cells)
    return header, rows


def table4_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores["strategy2"]
    prompts = _prompts(block)
    header = ["Model", "Category"] + [f"{p} {m}" for p in prompts for m in ("P", "R", "F1", "F1 95% CI")]
    rows = []
    for model in model_order(block, scores.get("calibration", [])):
        for key, shown in CATEGORY_ROWS:
            cells = [x for p in prompts for x in _prf_cells(block[model].get(p, {}).get(key))]
            rows.append([model, shown] + cells)
    return header, rows


def table5_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores["parse_ratio"]
    prompts = _prompts(block)
    header = ["Model", "n"] + [f"{p} {k}" for p in prompts for k in ("lenient", "lenient 95% CI", "strict")]
    rows = []
    for model in model_order(block, scores.get("calibration", [])):
        cells, ns = [], set()
        for p in prompts:
            c = block[model].get(p)
            if c and c.get("n") is not None:
                ns.add(str(c["n"]))
            cells += [f"{c['lenient']:.2f}", _ci(c, "lenient"), f"{c['strict']:.2f}"] if c else ["-"] * 3
        rows.append([model, "/".join(sorted(ns))] + cells)
    return header, rows


def spans_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores.get("spans", {})
    prompts = _prompts(block)
    header = ["Model", "Average"] + [
        f"{p} {mode} {m}" for p in prompts for mode in ("strict", "overlap") for m in "PRF"
    ]
    rows = []
    for model in model_order(block, scores.get("calibration", [])):
        for avg in ("micro", "macro"):
            cells = []
            for p in prompts:
                for mode in ("strict", "overlap"):
                    c = block[model].get(p, {}).get(mode, {}).get(avg)
                    cells += [_f(c[k]) for k in _PRF] if c else ["-"] * 3
            rows.append([model, avg] + cells)
    return header, rows


def table6_rows(encoders: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Transformer LM", "", "P", "R", "F1", "F1 95% CI"]
    rows = [[name, "", *_prf_cells(m)] for name, m in sorted(encoders.items())]
    return header, rows


def render_text(scores: dict, encoders: dict | None = None) -> str:
    """The report as plain text (``report.txt``)."""
    return "\n\n".join(p.text() if isinstance(p, TextTable) else p for p in report_parts(scores, encoders))


def report_parts(scores: dict, encoders: dict | None = None) -> list[TextTable | str]:
    """The report's tables in order, with the paragraphs between and after them."""
    cal = scores.get("calibration", [])
    models1 = model_order(scores["strategy1"], cal)
    parts = [
        TextTable(
            "Table 3. Strategy 1 (detection, category-agnostic): precision, recall, F1",
            *table3_rows(scores),
            rule_before=_calibration_rule(models1, cal),
        )
    ]
    if scores.get("strategy2"):
        models2 = model_order(scores["strategy2"], cal)
        parts.append(
            TextTable(
                "Table 4. Strategy 2 (structured output) by category",
                *table4_rows(scores),
                rule_before=_calibration_rule(models2, cal, len(CATEGORY_ROWS)),
            )
        )
        parts.append(
            TextTable(
                "Table 5. Ratio of responses with at least one entity in the requested format",
                *table5_rows(scores),
                note="lenient: the paper's ratio (an entity of the three categories in the requested structure); "
                "strict: the exact shape, whatever the items hold "
                "(valid JSON with annotations / the three-key dictionary)",
                rule_before=_calibration_rule(models2, cal),
            )
        )
        if scores.get("spans"):
            parts.append(
                TextTable(
                    "Character spans, strategy 2 (BSC shared-task definitions): strict and overlap",
                    *spans_rows(scores),
                    rule_before=_calibration_rule(models2, cal, 2),
                )
            )
    if encoders:
        parts.append(TextTable("Table 6. Fine-tuned encoders, micro average on the test split", *table6_rows(encoders)))
        parts.append(encoder_comparison(scores, encoders))
    failed = scores.get("failed") or {}
    if failed:
        lines = ["Failed jobs (not scored):"]
        for model, cells in sorted(failed.items()):
            for prompt, docs in sorted(cells.items()):
                lines.append(f"  {model} {prompt}: {len(docs)} documents: {', '.join(docs[:10])}")
        parts.append("\n".join(lines))
    m = scores.get("params", {}).get("match", {})
    boot = scores.get("params", {}).get("bootstrap", {})
    notes = [
        f"{scores.get('documents', 0)} documents; matching: {m.get('mode', '?')} "
        f"(threshold {m.get('threshold', '?')}{', accents stripped' if m.get('strip_accents') else ''}); "
        "seqeval strict IOB2"
    ]
    if boot:
        notes.append(f"95% CI: document bootstrap, {boot.get('resamples')} resamples, seed {boot.get('seed')}")
    if cal:
        notes.append(
            "calibration rows: echo = the note itself as the answer, oracle = the gold in each prompt's format"
        )
    parts.append("\n".join(notes))
    return parts


def encoder_comparison(scores: dict, encoders: dict) -> TextTable:
    """The best zero-shot cell (strategy 2 micro F1, else strategy 1) against each encoder."""
    cal = set(scores.get("calibration", []))
    best = None
    for strategy, key in (("strategy2", "micro"), ("strategy1", None)):
        for model, cells in scores.get(strategy, {}).items():
            if model in cal:
                continue
            for prompt, c in cells.items():
                f1 = (c[key] if key else c)["f1"]
                if best is None or f1 > best[0]:
                    best = (f1, f"{model} {prompt} ({strategy})")
        if best:
            break
    rows = [
        [name, "", _f(m["f1"]), _f(best[0]) if best else "-", _f(m["f1"] - best[0]) if best else "-"]
        for name, m in sorted(encoders.items())
    ]
    title = f"Best zero-shot cell vs encoders: {best[1] if best else 'none'}"
    return TextTable(title, ["Encoder", "", "F1", "zero-shot F1", "difference"], rows)


def comparison_table(result: dict) -> TextTable:
    """``report --compare``: a paired bootstrap p-value per metric."""
    rows = [
        [name, "", _f(m["a"]), _f(m["b"]), f"{m['difference']:+.3f}", f"{m['p_value']:.3f}"]
        for name, m in result["metrics"].items()
    ]
    title = f"Paired bootstrap: A = {result['a']}, B = {result['b']}, {result['documents']} shared documents"
    return TextTable(title, ["Metric", "", "A", "B", "A - B", "p"], rows)


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def long_rows(scores: dict, encoders: dict | None = None) -> list[dict[str, Any]]:
    """One row per strategy × model × prompt × category × metric, with its interval and n (for pandas)."""
    out: list[dict[str, Any]] = []

    def add(strategy: str, model: str, prompt: str, category: str, cell: dict, keys, n=None) -> None:
        for k in keys:
            lo_hi = ((cell.get("ci") or {}).get(k)) or [None, None]
            out.append(
                {
                    "strategy": strategy,
                    "model": model,
                    "prompt": prompt,
                    "category": category,
                    "metric": k,
                    "value": cell.get(k),
                    "ci_low": lo_hi[0],
                    "ci_high": lo_hi[1],
                    "n": n if n is not None else cell.get("n"),
                    "calibration": model in scores.get("calibration", []),
                }
            )

    for model, cells in scores["strategy1"].items():
        for prompt, c in cells.items():
            add("strategy1", model, prompt, "ENTITY", c, _PRF)
    for model, cells in scores.get("strategy2", {}).items():
        for prompt, cats in cells.items():
            n = scores.get("parse_ratio", {}).get(model, {}).get(prompt, {}).get("n")
            for cat, c in cats.items():
                add("strategy2", model, prompt, cat, c, _PRF, n)
    for model, cells in scores.get("spans", {}).items():
        for prompt, modes in cells.items():
            n = scores.get("parse_ratio", {}).get(model, {}).get(prompt, {}).get("n")
            for mode, cats in modes.items():
                for cat, c in cats.items():
                    add(f"spans_{mode}", model, prompt, cat, c, _PRF, n)
    for model, cells in scores.get("parse_ratio", {}).items():
        for prompt, c in cells.items():
            add("parse_ratio", model, prompt, "", c, ("lenient", "strict"))
    for name, m in (encoders or {}).items():
        add("encoder", name, "", "micro", m, _PRF)
    return out


def long_csv(scores: dict, encoders: dict | None = None) -> str:
    rows = long_rows(scores, encoders)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, ["strategy", "model", "prompt", "category", "metric", "value", "ci_low", "ci_high", "n", "calibration"]
    )
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_reports(scores: dict, out_dir: Path, encoders: dict | None = None) -> list[Path]:
    """Tables as text and CSV, every number as JSON and as a long CSV, and F1 by model × prompt as PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    files: dict[str, Any] = {
        "report.txt": render_text(scores, encoders),
        "scores.json": json.dumps({**scores, "encoders": encoders or {}}, indent=2),
        "metrics.csv": long_csv(scores, encoders),
        "table3.csv": _csv(*table3_rows(scores)),
    }
    if scores.get("strategy2"):
        files["table4.csv"] = _csv(*table4_rows(scores))
        files["table5.csv"] = _csv(*table5_rows(scores))
    if encoders:
        files["table6.csv"] = _csv(*table6_rows(encoders))
    for name, content in files.items():
        (out_dir / name).write_text(content, encoding="utf-8")
        written.append(out_dir / name)
    written.append(plot_f1(scores, out_dir / "f1.png"))
    return written


def f1_series(scores: dict) -> tuple[list[str], list[tuple[str, list[float]]], list[tuple[int, int]]]:
    """What ``f1.png`` draws: the models, each (label, F1 per model) series, and the (series,
    model) bars of strategy 2 that are empty because no answer parsed (lenient parse ratio 0)."""
    models = model_order(scores["strategy1"], scores.get("calibration", []))
    series = [
        (f"S1 {p}", [scores["strategy1"][m].get(p, {}).get("f1", 0) for m in models])
        for p in _prompts(scores["strategy1"])
    ]
    unparsed = []
    for p in _prompts(scores.get("strategy2", {})):
        k = len(series)
        series.append(
            (f"S2 {p}", [scores["strategy2"].get(m, {}).get(p, {}).get("micro", {}).get("f1", 0) for m in models])
        )
        for i, m in enumerate(models):
            ratio = scores.get("parse_ratio", {}).get(m, {}).get(p, {})
            if ratio and ratio.get("lenient", 0) == 0:
                unparsed.append((k, i))
    return models, series, unparsed


def plot_f1(scores: dict, path: Path) -> Path:
    # deferred: matplotlib (0.5 s), only for the figure
    import matplotlib

    matplotlib.use("Agg")
    # after the backend is chosen: no display needed
    import matplotlib.pyplot as plt

    models, series, unparsed = f1_series(scores)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) + 3), 4))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series):
        # a series with no bar above zero stays out of the legend
        ax.bar([i + k * width for i in range(len(models))], values, width, label=label if any(values) else None)
    for k, i in unparsed:
        ax.text(i + k * width, 0.01, "no parsed output", rotation=90, fontsize=6, ha="center", va="bottom")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=15, ha="right")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_title("F1 by model and prompt (S1: strategy 1, S2: strategy 2 micro)")
    if any(any(values) for _, values in series):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
