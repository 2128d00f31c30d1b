"""Out-of-distribution scores: how unlike the training X-rays an input is, from the model's own
features at several depths of its backbone.

For each chosen backbone stage (up to ``MAX_STAGES``, spread over its depth, the last one always)
the global average of the stage's output is modelled as a Gaussian per class with one shared
covariance, fitted on the training split (Lee et al. 2018's Mahalanobis score); the covariance is
shrunk towards a scaled identity by the Ledoit-Wolf rule, so that a few hundred images in hundreds
of dimensions still give a well-conditioned estimate. A stage's score is the squared distance to
the nearest class mean, divided by that score's 99th percentile on validation; the input's score
is the largest over the stages (an input unusual at any depth is unusual), and the threshold
accepts ``ACCEPT`` of the validation images. Several depths matter: early stages see pixel
statistics (noise, gradients, flat pages), late ones the shapes the model learned. Measured on the
main job's run (benchmarks/NOTES.md, session 15): AUROC 0.996 against generated non-radiographs
with every stage, 0.66 with the last stage alone, 0.35 for the relative Mahalanobis score.

Scoring is one function of arrays (:func:`scores`) written with ``jax.numpy``, so that
``Classifier.predict``, the exported StableHLO/ONNX artifacts and the fit compute the same number.
The fit runs once, on the host, in float64.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

METHOD = "mahalanobis at each backbone stage, the largest of their validation-scaled scores"
ACCEPT = 0.99  # share of in-distribution validation images the threshold accepts
MAX_STAGES = 8  # backbone stages read (ResNet50 has 19, DenseNet121 66): spread over the depth


def stage_indices(count: int, limit: int = MAX_STAGES) -> List[int]:
    """Which of ``count`` stages (in execution order) are read: all, or ``limit`` spread evenly with the last."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """The Ledoit-Wolf (2004) shrinkage estimate of the covariance of rows already centred."""
    n, d = centred.shape
    sample = centred.T @ centred / n
    scale = np.trace(sample) / d
    target_distance = np.sum((sample - scale * np.eye(d)) ** 2)
    if target_distance <= 0.0:
        return sample + 1e-6 * np.eye(d)
    # The mean squared distance of each row's outer product from the sample covariance.
    squared_norms = np.sum(centred ** 2, axis=1)
    spread = (np.sum(squared_norms ** 2) - 2.0 * np.einsum("nd,de,ne->", centred, sample, centred)
              + n * np.sum(sample ** 2)) / n ** 2
    shrinkage = min(max(spread, 0.0), target_distance) / target_distance
    return shrinkage * scale * np.eye(d) + (1.0 - shrinkage) * sample


def _whitening(covariance: np.ndarray) -> np.ndarray:
    """W such that ||x W||^2 is x's Mahalanobis norm under ``covariance``."""
    d = covariance.shape[0]
    lower = np.linalg.cholesky(covariance + 1e-9 * max(np.trace(covariance) / d, 1e-12) * np.eye(d))
    return np.linalg.inv(lower).T


def fit(stages: Sequence[np.ndarray], labels: np.ndarray) -> Dict[str, object]:
    """The detector from training features, one (n, d_j) array per stage, and labels (n,);
    its stage scales and threshold come from validation (:func:`with_threshold`)."""
    labels = np.asarray(labels)
    whiten, centres = [], []
    for j, features in enumerate(stages):
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or len(features) != len(labels) or len(features) < 2:
            raise ValueError(f"stage {j}: expected features (n >= 2, d) for {len(labels)} labels, got {features.shape}")
        if not np.all(np.isfinite(features)):
            raise ValueError(f"stage {j}: the features hold NaN or infinity: no detector fitted")
        classes = np.unique(labels)
        means = np.stack([features[labels == k].mean(axis=0) for k in classes])
        w = _whitening(shrunk_covariance(features - means[np.searchsorted(classes, labels)]))
        whiten.append(w.astype(np.float32))
        centres.append((means @ w).astype(np.float32))
    return {"whiten": whiten, "centres": centres, "scale": np.ones(len(whiten), np.float32),
            "threshold": np.float32(np.inf)}


def stage_scores(detector: Dict[str, object], stages: Sequence) -> jnp.ndarray:
    """(n, stages) squared Mahalanobis distances to the nearest class mean, float32."""
    out = []
    for features, whiten, centres in zip(stages, detector["whiten"], detector["centres"], strict=True):
        whitened = jnp.asarray(features, jnp.float32) @ jnp.asarray(whiten)
        out.append(jnp.min(jnp.sum((whitened[:, None, :] - jnp.asarray(centres)[None]) ** 2, axis=-1), axis=1))
    return jnp.stack(out, axis=1)


def scores(detector: Dict[str, object], stages: Sequence) -> jnp.ndarray:
    """OOD scores (n,) of per-stage pooled features: the largest validation-scaled stage score
    (1.0: as unusual as the 99th percentile of validation at that stage). Written with jax.numpy:
    it runs inside jitted and exported functions."""
    return jnp.max(stage_scores(detector, stages) / jnp.asarray(detector["scale"]), axis=1)


def with_threshold(detector: Dict[str, object], validation: Sequence, accept: float = ACCEPT) -> Dict[str, object]:
    """The detector with each stage's scale and the threshold that accepts ``accept`` of the
    validation images (``validation``: their per-stage features)."""
    raw = np.asarray(_compiled_stage_scores(detector, validation), np.float64)  # eager ops: ~3 s, compiled ~0.3 s
    if not len(raw) or not np.all(np.isfinite(raw)):
        raise ValueError("no finite validation scores to choose the threshold from")
    scale = np.maximum(np.quantile(raw, accept, axis=0), 1e-6).astype(np.float32)
    detector = {**detector, "scale": scale}
    combined = np.asarray(_compiled_scores(detector, validation), np.float64)
    return {**detector, "threshold": np.float32(np.quantile(combined, accept, method="higher"))}


_compiled_stage_scores = jax.jit(stage_scores)
_compiled_scores = jax.jit(scores)


def unlike_reason(score: float, threshold: float) -> str:
    """What a flagged input is told (the CLI, the API and the server)."""
    return (f"unlike the images it was trained on: OOD score {score:.2f} is above the threshold {threshold:.2f}, "
            f"which accepts {ACCEPT:.0%} of its validation X-rays")


def to_arrays(detector: Dict[str, object]) -> Dict[str, np.ndarray]:
    """Flat named arrays, for saving (``whiten_0``, ``centres_0``, ..., ``scale``, ``threshold``)."""
    out = {"scale": np.asarray(detector["scale"]), "threshold": np.asarray(detector["threshold"])}
    for j, (w, c) in enumerate(zip(detector["whiten"], detector["centres"], strict=True)):
        out[f"whiten_{j}"], out[f"centres_{j}"] = np.asarray(w), np.asarray(c)
    return out


def from_arrays(arrays: Optional[Dict[str, np.ndarray]], where: str) -> Optional[Dict[str, object]]:
    """A saved detector, checked for its parts, shapes and finiteness (None passes through)."""
    if arrays is None:
        return None
    if "scale" not in arrays or "threshold" not in arrays:
        raise ValueError(f"{where}: the OOD detector lacks its scale or threshold")
    count = int(np.size(arrays["scale"]))
    try:
        whiten = [np.asarray(arrays[f"whiten_{j}"]) for j in range(count)]
        centres = [np.asarray(arrays[f"centres_{j}"]) for j in range(count)]
    except KeyError as err:
        raise ValueError(f"{where}: the OOD detector lacks {err.args[0]}") from None
    for w, c in zip(whiten, centres, strict=True):
        if w.ndim != 2 or w.shape[0] != w.shape[1] or c.ndim != 2 or c.shape[1] != w.shape[0]:
            raise ValueError(f"{where}: the OOD detector's arrays do not fit together")
    detector = {"whiten": whiten, "centres": centres, "scale": np.asarray(arrays["scale"]).reshape(count),
                "threshold": np.asarray(arrays["threshold"]).reshape(())}
    if not all(np.all(np.isfinite(a)) for a in [*whiten, *centres, detector["scale"], detector["threshold"]]):
        raise ValueError(f"{where}: the OOD detector holds NaN or infinity")
    return detector
