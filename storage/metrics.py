"""Scores ⇄ Metric rows: one row per (run, strategy, model, prompt, category)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlmodel import Session, delete, select

from nerfleet.evaluation.calibration import CALIBRATION_MODELS
from nerfleet.storage.tables import Metric

ENCODER = "encoder"  # the strategy of fine-tuned encoder rows (Table 6); their run id is the training job's


def _cells(block: dict):
    for model, cells in block.items():
        for prompt, cell in cells.items():
            yield model, prompt, cell


def prf_of(row: Metric) -> dict:
    return {"precision": row.precision, "recall": row.recall, "f1": row.f1}


def replace_metrics(session: Session, run_id: str, rows: list[Metric]) -> None:
    """A run's metrics as one set: recomputing replaces them, in the caller's transaction."""
    session.exec(delete(Metric).where(Metric.run_id == run_id))
    session.add_all(rows)


def encoder_rows(job_id: str, encoder: str, metrics: dict, params: dict) -> list[Metric]:
    """seqeval's per-category and micro scores of a trained encoder on the test split."""
    return [
        Metric(
            run_id=job_id,
            strategy=ENCODER,
            model=encoder,
            prompt="",
            category=cat,
            support=m["support"],
            params_json=json.dumps(params),
            ci_json=_ci_of(m),
            **{k: m[k] for k in ("precision", "recall", "f1")},
        )
        for cat, m in metrics.items()
    ]


def encoder_scores(session: Session) -> dict[str, dict]:
    """Micro P/R/F1 of every trained encoder, by encoder name (the report's Table 6)."""
    rows = session.exec(select(Metric).where(Metric.strategy == ENCODER, Metric.category == "micro"))
    return {r.model: {**prf_of(r), "ci": json.loads(r.ci_json) if r.ci_json else None} for r in rows}


def encoder_metrics_by_job(session: Session, job_ids: list[str]) -> dict[str, dict[str, dict]]:
    """Per-category test scores of these training jobs, in one query."""
    out: dict[str, dict[str, dict]] = {j: {} for j in job_ids}
    for r in session.exec(select(Metric).where(Metric.strategy == ENCODER, Metric.run_id.in_(job_ids))):
        out[r.run_id][r.category] = prf_of(r)
    return out


def _ci_of(cell: dict, n: int | None = None) -> str | None:
    ci = cell.get("ci")
    if ci is None:
        return None
    return json.dumps({**ci, **({"n": n} if n is not None else {})})


def scores_to_rows(run_id: str, scores: dict) -> list[Metric]:
    params = json.dumps(scores.get("params", {}))

    def row(strategy: str, model: str, prompt: str, category: str, c: dict | None = None, **extra) -> Metric:
        prf = {k: c[k] for k in ("precision", "recall", "f1")} if c else {}
        return Metric(
            run_id=run_id,
            strategy=strategy,
            model=model,
            prompt=prompt,
            category=category,
            params_json=params,
            **prf,
            **extra,
        )

    rows = [
        row("strategy1", m, p, "ENTITY", c, support=c.get("n"), ci_json=_ci_of(c, c.get("n")))
        for m, p, c in _cells(scores["strategy1"])
    ]
    rows += [
        row("strategy2", m, p, cat, c, support=c["support"], ci_json=_ci_of(c))
        for m, p, cats in _cells(scores["strategy2"])
        for cat, c in cats.items()
    ]
    rows += [
        row(f"spans_{mode}", m, p, cat, c, support=c["support"], ci_json=_ci_of(c))
        for m, p, modes in _cells(scores.get("spans", {}))
        for mode, cats in modes.items()
        for cat, c in cats.items()
    ]
    rows += [
        row(
            "parse_ratio",
            m,
            p,
            key,
            value=c[key],
            support=c.get("dropped_items"),
            ci_json=json.dumps({"value": c["ci"][key], "n": c.get("n")}) if c.get("ci") else None,
        )
        for m, p, c in _cells(scores["parse_ratio"])
        for key in ("lenient", "strict")
    ]
    rows += [
        row("nervaluate", m, p, schema, c)
        for m, p, schemas in _cells(scores.get("nervaluate", {}))
        for schema, c in schemas.items()
    ]
    rows.append(row("meta", "", "", "documents", value=scores.get("documents", 0)))
    return rows


def rows_to_scores(rows: Iterable[Metric]) -> dict:
    scores: dict = {
        "strategy1": {},
        "strategy2": {},
        "spans": {},
        "parse_ratio": {},
        "nervaluate": {},
        "documents": 0,
        "params": {},
        "calibration": [],
    }
    for r in rows:
        scores["params"] = json.loads(r.params_json)
        ci = json.loads(r.ci_json) if r.ci_json else None
        prf = prf_of(r)
        if r.strategy == "strategy1":
            n = ci.pop("n", None) if ci else None
            scores["strategy1"].setdefault(r.model, {})[r.prompt] = {**prf, "n": n, "ci": ci}
        elif r.strategy == "strategy2":
            cell = {**prf, "support": r.support, "ci": ci}
            scores["strategy2"].setdefault(r.model, {}).setdefault(r.prompt, {})[r.category] = cell
        elif r.strategy.startswith("spans_"):
            modes = scores["spans"].setdefault(r.model, {}).setdefault(r.prompt, {})
            modes.setdefault(r.strategy.removeprefix("spans_"), {})[r.category] = {
                **prf,
                "support": r.support,
                "ci": ci,
            }
        elif r.strategy == "parse_ratio":
            cell = scores["parse_ratio"].setdefault(r.model, {}).setdefault(r.prompt, {})
            cell[r.category] = r.value
            cell["dropped_items"] = r.support
            if ci:
                cell["n"] = ci.get("n")
                cell.setdefault("ci", {})[r.category] = ci["value"]
        elif r.strategy == "nervaluate":
            scores["nervaluate"].setdefault(r.model, {}).setdefault(r.prompt, {})[r.category] = prf
        elif r.strategy == "meta" and r.category == "documents":
            scores["documents"] = int(r.value or 0)
    # echo and oracle are reserved model names (score_grid refuses them for models): derivable
    scores["calibration"] = [m for m in CALIBRATION_MODELS if m in scores["strategy1"]]
    return scores
