"""Self-contained HTML reports (figures embedded as PNG data URIs: one file
to mail or archive).

* :func:`run_report`: one trained run: metrics with intervals (all test and
  clean test), training curves, ROC and precision-recall, confusion matrix,
  reliability before/after temperature scaling, Grad-CAM overlays of true and
  false positives and negatives.
* :func:`comparison_report`: the table of ``fracjax compare`` with the
  ROC figure of every model and each model's section.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fracjax.evaluation import figures, gradcam, stats, tables
from fracjax.metrics import binary_metrics

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
.warning { background: #fff4e5; border: 1px solid #f0a030; padding: 0.4em 1em; margin: 1em 0; }
"""


def png_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def page(title: str, body: Sequence[str]) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<p class='note'>written by fracjax {stamp}</p>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def metrics_rows(result) -> List[List[str]]:
    columns = [result.metrics] + ([result.clean] if result.clean is not None else [])
    rows = []
    for key, label in stats.TABLE_ROWS:
        rows.append([label] + [stats.format_interval(m.get(key), m.get("intervals", {}).get(key)) for m in columns])
    return rows


def metrics_section(result) -> str:
    header = ["metric", f"{result.split} (n={result.metrics['n']})"]
    if result.clean is not None:
        header.append(f"clean {result.split} (n={result.clean['n']})")
    level = int(round(100 * result.metrics.get("interval_level", 0.95)))
    note = (
        f"<p class='note'>Decision threshold {stats.format_thresholds([result.threshold])[0]}; "
        f"[..] = {level}% percentile bootstrap "
        f"interval{_resampling(result)}; probabilities "
        f"{'temperature-scaled' if result.calibrated else 'as the model gives them'}."
        + ("" if result.clean is not None else " No leakage audit given: no clean-test column.")
        + "</p>"
    )
    return html_table(header, metrics_rows(result)) + note


def _resampling(result) -> str:
    cluster = getattr(result, "cluster", None)
    return f" resampling {cluster}s (cluster bootstrap: one {cluster}'s images are not independent)" if cluster else ""


def _pick(indices: np.ndarray, probs: np.ndarray, count: int, most_confident: bool) -> np.ndarray:
    order = np.argsort(probs[indices])
    order = order[::-1] if most_confident else order
    return indices[order[:count]]


def gradcam_grid(classifier, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, threshold: float,
                 per_group: int = 4, layer: str = gradcam.DEFAULT_LAYER, path: Optional[str] = None) -> bytes:
    """Grad-CAM ("fractured") overlays of the most confident true/false
    positives and negatives (``per_group`` each)."""
    predicted = probs >= threshold
    groups = [
        ("true positive", np.flatnonzero(predicted & (labels == 1)), True),
        ("false positive", np.flatnonzero(predicted & (labels == 0)), True),
        ("false negative", np.flatnonzero(~predicted & (labels == 1)), False),
        ("true negative", np.flatnonzero(~predicted & (labels == 0)), False),
    ]
    chosen = [(name, _pick(idx, probs, per_group, high)) for name, idx, high in groups]
    flat = np.concatenate([idx for _, idx in chosen]).astype(np.int64)
    maps = {}
    if flat.size:
        out = gradcam.explain_in_chunks(classifier, [images[i] for i in flat], layer=layer)
        maps = {int(i): (out["images"][k], out["maps"][k]) for k, i in enumerate(flat)}
    rows = []
    for name, idx in chosen:
        items = [(gradcam.overlay(*maps[int(i)]), f"p={probs[i]:.2f}") for i in idx]
        rows.append((f"{name} ({len(idx)})", items))
    return figures.image_grid(rows, path)


def run_report(
    run_dir: str,
    classifier,
    result,
    history: Optional[List[Dict[str, Any]]] = None,
    images: Optional[np.ndarray] = None,
    raw_probabilities: Optional[np.ndarray] = None,
    calibration: Optional[Dict[str, Any]] = None,
    title: Optional[str] = None,
    gradcam_per_group: int = 4,
    split_kind: Optional[str] = None,
) -> str:
    """Write ``<run_dir>/report.html`` for an evaluated run; returns its path.

    ``result``: the test :class:`EvaluationResult`; ``images``: its images
    (for Grad-CAM); ``raw_probabilities``: before temperature scaling (for the
    reliability diagram)."""
    spec = classifier.spec
    body = [f"<p>{html.escape(spec.get('model', '?'))} with the {html.escape(str(spec.get('head')))} head, "
            f"{spec.get('image_size')} px; run folder {html.escape(os.path.abspath(run_dir))}.</p>"]
    body.append(warnings_box(result.warnings()))
    body.append(data_line(run_dir, split_kind))
    body.append("<h2>Test metrics</h2>")
    body.append(metrics_section(result))
    body.extend(extra_sections(result))
    if calibration:
        body.append(operating_points_section(result, calibration))
    if result.ood:
        body.append(ood_section(result.ood))
    if history:
        body.append("<h2>Training curves</h2>")
        body.append(png_tag(figures.training_curves(history), "training curves"))
    body.append("<h2>ROC and precision-recall</h2>")
    # Curves rank the logits, as the table's AUROC does.
    scores = result.logits if result.logits is not None else result.probabilities
    curves = {"all test": (result.labels, scores)}
    if result.clean_mask is not None and result.clean_mask.any():
        curves["clean test"] = (result.labels[result.clean_mask], scores[result.clean_mask])
    body.append(png_tag(figures.roc_pr(curves, os.path.join(run_dir, "roc.png")), "ROC and precision-recall"))
    body.append("<h2>Confusion matrix and reliability</h2>")
    extra = {"before temperature": raw_probabilities} if raw_probabilities is not None and result.calibrated else None
    body.append(png_tag(figures.confusion_matrix(result.metrics["confusion"], result.threshold), "confusion matrix"))
    body.append(png_tag(figures.reliability_diagram(result.labels, result.probabilities, extra=extra), "reliability"))
    if images is not None and gradcam_per_group:
        body.append("<h2>Grad-CAM (evidence for 'fractured')</h2>")
        body.append("<p class='note'>Most confident examples of each kind; warm colours drive the fracture "
                    f"logit (layer '{gradcam.DEFAULT_LAYER}').</p>")
        grid = gradcam_grid(classifier, images, result.labels, result.probabilities, result.threshold,
                            gradcam_per_group, path=os.path.join(run_dir, "gradcam.png"))
        body.append(png_tag(grid, "Grad-CAM grid"))
    body.append("<h2>Model</h2>" + model_table(spec))
    path = os.path.join(run_dir, "report.html")
    with open(path, "w") as f:
        f.write(page(title or f"fracjax report: {os.path.basename(os.path.abspath(run_dir))}", body))
    return path


def data_line(run_dir: str, split_kind: Optional[str] = None) -> str:
    """Which data set the run trained and was tested on (its config.json), and which split:
    ``split_kind`` as the prepared data set recorded it (``info.metadata["split"]["kind"]``),
    else as the run's report.json kept it."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            data = json.load(f)["train"]["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    own = data.get("data_folder") or data.get("data_csv")
    name = str(own or data.get("dataset", "?"))
    return f"<p>Data set {html.escape(name)}; {split_words(data, name, split_kind or _recorded_kind(run_dir))}.</p>"


def _recorded_kind(run_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(run_dir, "report.json")) as f:
            return json.load(f)["data"]["split"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def split_words(data: Dict[str, Any], name: str, kind: Optional[str]) -> str:
    """Which split the run used, in words, from the kind its builder recorded: generated, given
    by the user's folders or CSV column, grouped here, or a published one."""
    if name.split("/")[0] == "synthetic_fracture":
        return "generated images, each made once, in generated splits (no copies across them)"
    if kind == "given":
        by = ("split folders" if data.get("data_folder") else
              "CSV's split column" if data.get("data_csv") else "data set")
        return f"the split given by the {by} (the leakage audit says whether copies cross it)"
    if kind == "grouped":
        return ("a split drawn here that keeps every patient and near-duplicate group in one split "
                "(the prepared data set's info.metadata['split'])")
    if kind == "published":
        return "the data set's published split (which may hold copies across splits: see the leakage audit)"
    return "a split this run did not record (the prepared data set's info.metadata['split'] says which)"


def extra_sections(result) -> List[str]:
    """Per body part, study-level and localisation tables, as
    ``EvaluationResult.table`` gives them; a note where boxes are missing."""
    out = []
    for title, header, rows in tables.extra_tables(result):
        out.append(f"<h2>{html.escape(title[0].upper() + title[1:])}</h2>" + html_table(header, rows))
    if result.localisation:
        out.append("<p class='note'>Pointing game: a hit when the map's maximum lies in a fracture box; energy "
                   "inside: the share of the map's mass inside the boxes. Over the true positives that have "
                   "boxes.</p>")
    else:
        out.append("<p class='note'>No fracture boxes in this data set: whether Grad-CAM points at the fracture "
                   "is not measured.</p>")
    return out


def _percent(share) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def ood_section(measured: Dict[str, Any]) -> str:
    """What the model says of inputs that are not X-rays: the detector against the probe set."""
    rows = [["this run's test X-rays", measured["test"]["n"], _percent(measured["test"]["detector"]),
             _percent(measured["test"]["flagged"])]]
    rows += [[kind.replace("_", " "), row["n"], _percent(row["detector"]), _percent(row["flagged"])]
             for kind, row in measured["by_kind"].items()]
    rows.append(["all generated non-radiographs", measured["probes"]["n"], _percent(measured["probes"]["detector"]),
                 _percent(measured["probes"]["flagged"])])
    return (
        "<h2>Does the model know what it was not trained on?</h2>"
        f"<p class='note'>An out-of-distribution detector ({html.escape(measured['method'])}; "
        f"{measured['features']} pooled features from {measured['stages']} stages, fitted on the training split) "
        f"flags an input whose score passes {measured['threshold']:.2f}, the score that accepts "
        f"{measured['accept']:.0%} of "
        "the validation X-rays; the input checks flag DICOM of other modalities, colour pictures and uniform frames "
        f"before the model. Against generated non-radiographs (made by code, never seen in training) its AUROC is "
        f"<strong>{measured['auroc_vs_probes']:.3f}</strong>. A flagged input gets no label.</p>"
        + html_table(["images", "n", "flagged by the detector", "flagged (checks or detector)"], rows)
    )


def warnings_box(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f"<div class='warning'><strong>Read this first</strong><ul>{items}</ul></div>"


def operating_points_section(result, calibration: Dict[str, Any]) -> str:
    points = calibration.get("operating_points", {})
    texts = stats.format_thresholds(list(points.values()))
    rows = [[name, text] + _at_threshold(result, t) for (name, t), text in zip(points.items(), texts, strict=True)]
    return (
        "<h2>Operating points (chosen on validation, applied to test)</h2>"
        f"<p class='note'>Temperature {calibration['temperature']:.3f} fitted on validation "
        f"(validation ECE {calibration['ece_before']:.3f} before, {calibration['ece_after']:.3f} after; "
        "temperature scaling changes probabilities, never the ranking, so AUROC is unchanged).</p>"
        + html_table(["operating point", "threshold", "test sensitivity", "test specificity", "test accuracy"], rows)
    )


def model_table(spec: Dict[str, Any]) -> str:
    """The model spec as a two-column table (nested values as compact JSON)."""
    rows = []
    for key, value in spec.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = json.dumps(value, default=str)
        rows.append([key.replace("_", " "), "default" if value is None else value])
    return html_table(["field", "value"], rows)


def _at_threshold(result, threshold: float) -> List[str]:
    m = binary_metrics(result.labels, result.probabilities, threshold)
    return [f"{m['sensitivity']:.3f}", f"{m['specificity']:.3f}", f"{m['accuracy']:.3f}"]
