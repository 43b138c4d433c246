"""Paper-shaped reports (Tables 3–6): text, CSV, JSON and a PNG figure."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

CATEGORY_ROWS = (("DISEASE", "DISEASE"), ("PROCEDURE", "PROCEDURE"), ("SYMPTOM", "SYMPTOM"), ("micro", "micro avg"))


def _f(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def _prompts(block: dict) -> list[str]:
    return sorted({p for cells in block.values() for p in cells})


def _grid(title: str, header: list[str], rows: list[list[str]], note: str = "") -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [title, line(header), "-" * len(line(header))] + [line(r) for r in rows]
    if note:
        out.append(note)
    return "\n".join(out)


def _prf_cells(c: dict | None) -> list[str]:
    return [_f(c["precision"]), _f(c["recall"]), _f(c["f1"])] if c else ["-"] * 3


def table3_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores["strategy1"]
    prompts = _prompts(block)
    header = ["Model", ""] + [f"{p} {m}" for p in prompts for m in ("P", "R", "F")]
    rows = []
    for model in sorted(block):
        cells = [x for p in prompts for x in _prf_cells(block[model].get(p))]
        rows.append([model, ""] + cells)
    return header, rows


def table4_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores["strategy2"]
    prompts = _prompts(block)
    header = ["Model", "Category"] + [f"{p} {m}" for p in prompts for m in ("P", "R", "F1")]
    rows = []
    for model in sorted(block):
        for key, shown in CATEGORY_ROWS:
            cells = [x for p in prompts for x in _prf_cells(block[model].get(p, {}).get(key))]
            rows.append([model if key == "DISEASE" else "", shown] + cells)
    return header, rows


def table5_rows(scores: dict) -> tuple[list[str], list[list[str]]]:
    block = scores["parse_ratio"]
    prompts = _prompts(block)
    header = ["Model", ""] + [f"{p} {k}" for p in prompts for k in ("lenient", "strict")]
    rows = []
    for model in sorted(block):
        cells = []
        for p in prompts:
            c = block[model].get(p)
            cells += [f"{c['lenient']:.2f}", f"{c['strict']:.2f}"] if c else ["-", "-"]
        rows.append([model, ""] + cells)
    return header, rows


def table6_rows(encoders: dict) -> tuple[list[str], list[list[str]]]:
    header = ["Transformer LM", "", "P", "R", "F1"]
    rows = [[name, "", *_prf_cells(m)] for name, m in sorted(encoders.items())]
    return header, rows


def render_text(scores: dict, encoders: dict | None = None) -> str:
    parts = [
        _grid("Table 3. Strategy 1 (detection, category-agnostic): precision, recall, F1", *table3_rows(scores)),
    ]
    if scores.get("strategy2"):
        parts.append(_grid("Table 4. Strategy 2 (structured output) by category", *table4_rows(scores)))
        parts.append(
            _grid(
                "Table 5. Ratio of documents with entities parsed in the requested format",
                *table5_rows(scores),
                note="lenient: the structure found with at least one entity; strict: valid JSON / the exact dict shape",
            )
        )
    if encoders:
        parts.append(_grid("Table 6. Fine-tuned encoders, micro average on the test split", *table6_rows(encoders)))
        parts.append(comparison_text(scores, encoders))
    failed = scores.get("failed") or {}
    if failed:
        lines = ["Failed jobs (not scored):"]
        for model, cells in sorted(failed.items()):
            for prompt, docs in sorted(cells.items()):
                lines.append(f"  {model} {prompt}: {len(docs)} documents: {', '.join(docs[:10])}")
        parts.append("\n".join(lines))
    m = scores.get("params", {}).get("match", {})
    parts.append(
        f"{scores.get('documents', 0)} documents; matching: {m.get('mode', '?')} "
        f"(threshold {m.get('threshold', '?')}); seqeval strict IOB2"
    )
    return "\n\n".join(parts)


def comparison_text(scores: dict, encoders: dict) -> str:
    """The best zero-shot cell (strategy 2 micro F1, else strategy 1) against each encoder."""
    best = None
    for strategy, key in (("strategy2", "micro"), ("strategy1", None)):
        for model, cells in scores.get(strategy, {}).items():
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
    return _grid(title, ["Encoder", "", "F1", "zero-shot F1", "difference"], rows)


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_reports(scores: dict, out_dir: Path, encoders: dict | None = None) -> list[Path]:
    """Tables as text and CSV, every number as JSON, and F1 by model × prompt as PNG."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    files: dict[str, Any] = {
        "report.txt": render_text(scores, encoders),
        "scores.json": json.dumps({**scores, "encoders": encoders or {}}, indent=2),
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


def plot_f1(scores: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(scores["strategy1"])
    series = [
        (f"S1 {p}", [scores["strategy1"][m].get(p, {}).get("f1", 0) for m in models])
        for p in _prompts(scores["strategy1"])
    ]
    series += [
        (f"S2 {p}", [scores["strategy2"].get(m, {}).get(p, {}).get("micro", {}).get("f1", 0) for m in models])
        for p in _prompts(scores.get("strategy2", {}))
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) + 3), 4))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series):
        ax.bar([i + k * width for i in range(len(models))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=15, ha="right")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.set_title("F1 by model and prompt (S1: strategy 1, S2: strategy 2 micro)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
