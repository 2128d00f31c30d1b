"""Figures of an evaluation (matplotlib's object API, so the global backend is never switched): ROC and
precision-recall curves of one or several models, the confusion matrix, the
reliability diagram, training curves and a Grad-CAM grid. Each function
returns PNG bytes (for the self-contained HTML report) and can write a file."""

from __future__ import annotations

import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fracjax.evaluation import stats
from fracjax.metrics import LABEL_NAMES, auroc


def _figure(rows: int = 1, cols: int = 1, **kwargs):
    """A figure and its axes through matplotlib's object API: pyplot and the
    global backend are left alone (a notebook keeps its inline backend)."""
    from matplotlib.figure import Figure

    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def _finish(fig, path: Optional[str]) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    if path:
        with open(path, "wb") as f:
            f.write(data)
    return data


def roc_pr(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], path: Optional[str] = None) -> bytes:
    """ROC and precision-recall curves, one line per model:
    ``{name: (labels, scores)}`` (logits or probabilities: only their order counts)."""
    fig, (ax_roc, ax_pr) = _figure(1, 2, figsize=(10, 4.2))
    for name, (labels, probs) in curves.items():
        roc = stats.roc_curve(labels, probs)
        pr = stats.pr_curve(labels, probs)
        auc = auroc(labels, probs)
        ax_roc.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUROC {auc:.3f})")
        ax_pr.step(pr["recall"], pr["precision"], where="post", label=f"{name} (AP {pr['average_precision']:.3f})")
    ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(
        xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01)
    )
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
        ax.grid(alpha=0.3)
    return _finish(fig, path)


def confusion_matrix(confusion: Dict[str, int], threshold: float, path: Optional[str] = None) -> bytes:
    m = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig, ax = _figure(figsize=(3.8, 3.4))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black", fontsize=13)
    names = [name.replace("_", " ") for name in LABEL_NAMES]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion (threshold {threshold:.2f})")
    return _finish(fig, path)


def reliability_diagram(labels, probs, bins: int = 10, path: Optional[str] = None,
                        extra: Optional[Dict[str, np.ndarray]] = None) -> bytes:
    """Observed fracture frequency against predicted probability per bin,
    with the bin counts below; ``extra``: other probability sets (e.g. before
    temperature scaling) drawn on the same axes."""
    fig, (ax, ax_n) = _figure(2, 1, figsize=(4.6, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    sets = {"model": probs}
    sets.update(extra or {})
    for name, p in sets.items():
        r = stats.reliability(labels, p, bins)
        ece = stats.expected_calibration_error(labels, p, bins)
        filled = r["count"] > 0
        ax.plot(r["confidence"][filled], r["frequency"][filled], "o-", label=f"{name} (ECE {ece:.3f})")
        if name == "model":
            centres = (r["edges"][:-1] + r["edges"][1:]) / 2
            ax_n.bar(centres, r["count"], width=1.0 / bins * 0.9, color="grey")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(ylabel="observed fraction fractured", title="reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax_n.set(xlabel="predicted probability of fracture", ylabel="count")
    return _finish(fig, path)


def training_curves(history: List[Dict[str, Any]], path: Optional[str] = None) -> bytes:
    epochs = [h["epoch"] for h in history]
    fig, axes = _figure(1, 2, figsize=(10, 3.8))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    axes[0].plot(epochs, [h["validation"]["loss"] for h in history], "o-", label="validation loss")
    axes[0].set(xlabel="epoch", ylabel="binary cross-entropy")
    axes[1].plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train accuracy")
    axes[1].plot(epochs, [h["validation"]["accuracy"] for h in history], "o-", label="validation accuracy")
    axes[1].plot(epochs, [h["validation"]["auroc"] for h in history], "o-", label="validation AUROC")
    axes[1].set(xlabel="epoch", ylim=(0.4, 1.01))
    changes = [h["epoch"] - 0.5 for h0, h in zip(history, history[1:], strict=False) if h["phase"] != h0["phase"]]
    for ax in axes:
        for x in changes:
            ax.axvline(x, color="grey", linestyle=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training (dotted: phase 1 -> phase 2)" if changes else f"training (phase {history[0]['phase']})"
                 if history else "training")
    return _finish(fig, path)


def image_grid(rows: Sequence[Tuple[str, Sequence[Tuple[np.ndarray, str]]]], path: Optional[str] = None) -> bytes:
    """A grid of RGB/grey pictures: ``[(row title, [(image, caption), ...]), ...]``."""
    cols = max((len(items) for _, items in rows), default=1) or 1
    fig, axes = _figure(len(rows), cols, figsize=(1.9 * cols, 2.1 * len(rows)), squeeze=False)
    for r, (title, items) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(items):
                image, caption = items[c]
                ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None, vmin=0, vmax=255)
                ax.set_title(caption, fontsize=7)
            if c == 0:
                ax.text(-0.08, 0.5, title, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=9)
        if not items:
            axes[r][0].text(0.5, 0.5, "(none)", ha="center", va="center", fontsize=8)
    return _finish(fig, path)
