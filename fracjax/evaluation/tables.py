"""An evaluation's tables, rendered in one place: the console's markdown
(``EvaluationResult.table()``, ``fracjax evaluate``) and the report's HTML
(:mod:`fracjax.evaluation.report`) take their rows from here, so the two
always show the same numbers the same way."""

from __future__ import annotations

from typing import List, Tuple

from fracjax.evaluation import localisation, stats, studies

Table = Tuple[str, List[str], List[List[str]]]  # (title, header, rows of cells)


def markdown(result, digits: int = 3) -> str:
    """metric | the split [| its clean subset], each value with its interval;
    the result's warnings above, the threshold and interval below, then the
    extra tables."""
    columns = [(f"{result.split} (n={result.metrics['n']})", result.metrics)]
    if result.clean is not None:
        columns.append((f"clean {result.split} (n={result.clean['n']})", result.clean))
    rows = [f"WARNING: {w}" for w in result.warnings()]
    rows += ["| metric | " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for key, label in stats.TABLE_ROWS:
        cells = [stats.format_interval(m.get(key), m.get("intervals", {}).get(key), digits) for _, m in columns]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append(f"\nthreshold {stats.format_thresholds([result.threshold])[0]}; {_interval_note(result)}")
    for title, header, body in extra_tables(result, digits):
        rows += [f"\n{title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(rows)


def _interval_note(result) -> str:
    if not result.metrics.get("intervals"):
        return "no intervals (bootstrap=0)"
    level = int(round(100 * result.metrics.get("interval_level", 0.95)))
    note = f"[..] = {level}% bootstrap interval"
    return note + (f" resampling {result.cluster}s (cluster bootstrap)" if result.cluster else "")


def extra_tables(result, digits: int = 3) -> List[Table]:
    """The per-subgroup, study-level and localisation tables the result has."""
    out = []
    if result.subgroups:
        out.append(("by body part", *studies.summary_table(result.subgroups, digits)))
    if result.studies and "by" in result.studies:
        out.append((f"study level ({result.studies['how']} of each study's image probabilities)",
                     *studies.summary_table(result.studies["by"], digits)))
    if result.localisation:
        out.append(("does the saliency map point at the fracture? (true positives with boxes)",
                    *localisation.summary_table(result.localisation, digits)))
    return out
