"""Does a saliency map point at the fracture? (numpy, host side)

For an image with fracture boxes and a map at the image's size (Grad-CAM or
Grad-CAM++ from :mod:`fracjax.evaluation.gradcam`):

* the pointing game (Zhang et al. 2016): a hit when the map's maximum lies in
  a box, within ``tolerance`` pixels; where several pixels share the maximum,
  the share of them that hit; a map that is zero everywhere points nowhere (0);
* energy inside: the share of the map's total (non-negative) mass inside the
  boxes; 0 for an all-zero map.

Boxes are ``(ymin, xmin, ymax, xmax)`` in [0, 1] of the image's height and
width, as TFDS ``BBoxFeature`` stores them. Scores are reported over the true
positives (fractured images the model called fractured), with percentile
bootstrap intervals over images.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def _boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
    if bad.any() or (boxes < 0).any() or (boxes > 1).any():
        raise ValueError(f"boxes must be (ymin, xmin, ymax, xmax) within [0, 1] with min <= max, got {boxes.tolist()}")
    return boxes


def box_mask(boxes, height: int, width: int, tolerance: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies in any box, grown by
    ``tolerance`` pixels on each side."""
    ys = (np.arange(height) + 0.5)[:, None]
    xs = (np.arange(width) + 0.5)[None, :]
    mask = np.zeros((height, width), bool)
    for y0, x0, y1, x1 in _boxes(boxes):
        mask |= ((ys >= y0 * height - tolerance) & (ys <= y1 * height + tolerance)
                 & (xs >= x0 * width - tolerance) & (xs <= x1 * width + tolerance))
    return mask


def _map(cam) -> np.ndarray:
    cam = np.asarray(cam, np.float64)
    cam = cam[..., 0] if cam.ndim == 3 and cam.shape[-1] == 1 else cam
    if cam.ndim != 2 or not np.isfinite(cam).all():
        raise ValueError(f"a saliency map must be a finite (H, W) array, got shape {np.shape(cam)}")
    return np.maximum(cam, 0.0)


def pointing_hit(cam, boxes, tolerance: float = 0.0) -> float:
    """1.0 when the map's maximum lies in a box, 0.0 when not (a share for tied maxima)."""
    cam = _map(cam)
    peak = cam.max(initial=0.0)
    if peak <= 0.0:
        return 0.0
    at_peak = cam == peak
    inside = box_mask(boxes, *cam.shape, tolerance=tolerance)
    return float(np.sum(at_peak & inside) / np.sum(at_peak))


def energy_inside(cam, boxes) -> float:
    """Share of the map's mass inside the boxes (0.0 for an all-zero map)."""
    cam = _map(cam)
    total = cam.sum()
    if total <= 0.0:
        return 0.0
    return float(cam[box_mask(boxes, *cam.shape)].sum() / total)


def _mean_with_interval(values: np.ndarray, samples: int, level: float, seed: int) -> Dict[str, object]:
    if values.size == 0:
        return {"value": float("nan"), "interval": (float("nan"), float("nan"))}
    if samples <= 0:
        return {"value": float(values.mean()), "interval": None}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (samples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {"value": float(values.mean()), "interval": (float(low), float(high))}


def _mean_share(masks) -> float:
    return float(np.mean([m.mean() for m in masks])) if masks else float("nan")


def localisation_scores(cams: Sequence, boxes: Sequence, tolerance: float = 0.0, samples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> Dict[str, object]:
    """Pointing-game hit rate and mean energy inside the boxes over images
    (one map and one set of boxes each; images without boxes are left out),
    each with a bootstrap interval. ``n``: the images scored."""
    if len(cams) != len(boxes):
        raise ValueError(f"{len(cams)} maps for {len(boxes)} sets of boxes")
    scored = [(c, b) for c, b in zip(cams, boxes, strict=True) if np.size(b)]
    hits = np.asarray([pointing_hit(c, b, tolerance) for c, b in scored], np.float64)
    energy = np.asarray([energy_inside(c, b) for c, b in scored], np.float64)
    return {
        "n": len(scored),
        "pointing_game": _mean_with_interval(hits, samples, level, seed),
        "energy_inside": _mean_with_interval(energy, samples, level, seed),
        # What a map with no information scores: its peak at a uniformly random
        # pixel (the share of pixels within tolerance of a box), its mass spread
        # evenly (the share of pixels in the boxes).
        "chance": {
            "pointing_game": _mean_share([box_mask(b, *_map(c).shape, tolerance) for c, b in scored]),
            "energy_inside": _mean_share([box_mask(b, *_map(c).shape) for c, b in scored]),
        },
        "tolerance_px": tolerance,
        "interval_level": level,
    }


def summary_table(by_method: Dict[str, Dict[str, object]], digits: int = 3):
    """(header, rows) of localisation scores per saliency method."""
    from fracjax.evaluation.stats import format_interval

    header = ["method", "n", "pointing game", "(chance)", "tolerance (px)", "energy inside the boxes", "(chance)"]
    rows = []
    for method, scores in by_method.items():
        if not scores["n"]:  # no true positive with a box: nothing to score, said in words, not as nan
            rows.append([method, "0", "no true positives with a box to score", "-", "-", "-", "-"])
            continue
        cells = [format_interval(scores[k]["value"], scores[k]["interval"], digits)
                 for k in ("pointing_game", "energy_inside")]
        chance = [f"{scores['chance'][k]:.{digits}f}" for k in ("pointing_game", "energy_inside")]
        rows.append(
            [method, str(scores["n"]), cells[0], chance[0], f"{scores['tolerance_px']:.1f}", cells[1], chance[1]]
        )
    return header, rows
