"""Scores ⇄ Metric rows: one row per (run, strategy, model, prompt, category)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from nerfleet.storage.tables import Metric


def scores_to_rows(run_id: str, scores: dict) -> list[Metric]:
    params = json.dumps(scores.get("params", {}))
    rows = []
    for model, cells in scores["strategy1"].items():
        for prompt, c in cells.items():
            rows.append(
                Metric(
                    run_id=run_id,
                    strategy="strategy1",
                    model=model,
                    prompt=prompt,
                    category="ENTITY",
                    precision=c["precision"],
                    recall=c["recall"],
                    f1=c["f1"],
                    params_json=params,
                )
            )
    for model, cells in scores["strategy2"].items():
        for prompt, cats in cells.items():
            for cat, c in cats.items():
                rows.append(
                    Metric(
                        run_id=run_id,
                        strategy="strategy2",
                        model=model,
                        prompt=prompt,
                        category=cat,
                        precision=c["precision"],
                        recall=c["recall"],
                        f1=c["f1"],
                        support=c["support"],
                        params_json=params,
                    )
                )
    for model, cells in scores["parse_ratio"].items():
        for prompt, c in cells.items():
            for key in ("lenient", "strict"):
                rows.append(
                    Metric(
                        run_id=run_id,
                        strategy="parse_ratio",
                        model=model,
                        prompt=prompt,
                        category=key,
                        value=c[key],
                        support=c.get("dropped_items"),
                        params_json=params,
                    )
                )
    for model, cells in scores.get("nervaluate", {}).items():
        for prompt, schemas in cells.items():
            for schema, c in schemas.items():
                rows.append(
                    Metric(
                        run_id=run_id,
                        strategy="nervaluate",
                        model=model,
                        prompt=prompt,
                        category=schema,
                        precision=c["precision"],
                        recall=c["recall"],
                        f1=c["f1"],
                        params_json=params,
                    )
                )
    rows.append(
        Metric(
            run_id=run_id,
            strategy="meta",
            model="",
            prompt="",
            category="documents",
            value=scores.get("documents", 0),
            params_json=params,
        )
    )
    return rows


def rows_to_scores(rows: Iterable[Metric]) -> dict:
    scores: dict = {"strategy1": {}, "strategy2": {}, "parse_ratio": {}, "nervaluate": {}, "documents": 0, "params": {}}
    for r in rows:
        scores["params"] = json.loads(r.params_json)
        prf = {"precision": r.precision, "recall": r.recall, "f1": r.f1}
        if r.strategy == "strategy1":
            scores["strategy1"].setdefault(r.model, {})[r.prompt] = prf
        elif r.strategy == "strategy2":
            scores["strategy2"].setdefault(r.model, {}).setdefault(r.prompt, {})[r.category] = {
                **prf,
                "support": r.support,
            }
        elif r.strategy == "parse_ratio":
            cell = scores["parse_ratio"].setdefault(r.model, {}).setdefault(r.prompt, {})
            cell[r.category] = r.value
            cell["dropped_items"] = r.support
        elif r.strategy == "nervaluate":
            scores["nervaluate"].setdefault(r.model, {}).setdefault(r.prompt, {})[r.category] = prf
        elif r.strategy == "meta" and r.category == "documents":
            scores["documents"] = int(r.value or 0)
    return scores
