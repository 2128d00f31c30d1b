"""The OOD detector at the end of a run: fitted on the training split's pooled backbone features,
its threshold chosen on validation, saved in the best checkpoint, and measured against the built-in
probe set of generated non-radiographs (:mod:`fracjax.data.probes`)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fracjax import ood
from fracjax.checkpoint import write_ood
from fracjax.data.probes import probe_set
from fracjax.metrics import auroc

MAX_TRAIN = 4000  # training images the Gaussians are fitted on (seeded sample): enough for 2048 features
WEAK_AUROC = 0.9  # below this against the probe set, the run warns that the detector is weak


def sample(count: int, limit: int = MAX_TRAIN, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``count`` examples (all of them when fewer)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def fit_detector(classifier, train_images: Sequence[np.ndarray], train_labels: np.ndarray,
                 validation_images: Sequence[np.ndarray], save: bool = True) -> Dict[str, object]:
    """Fit the detector of ``classifier``, choose its stage scales and threshold on validation,
    give it to the classifier and (``save``) write it beside its checkpoint."""
    detector = ood.fit(classifier.features(list(train_images)), train_labels)
    classifier.detector = ood.with_threshold(detector, classifier.features(list(validation_images)))
    if save and classifier.checkpoint:
        write_ood(classifier.checkpoint, ood.to_arrays(classifier.detector))
    return classifier.detector


def _share(mask: np.ndarray) -> Optional[float]:
    return float(np.mean(mask)) if len(mask) else None


def measure(classifier, test_images: Sequence[np.ndarray], per_kind: int = 8, seed: int = 0) -> Dict[str, Any]:
    """How the detector (and the input checks) separate the probe set from the test images:
    the detector's AUROC, and the share flagged of the test images and of each probe kind."""
    probes, kinds = probe_set(classifier.image_size, per_kind, seed)
    test = classifier.predict(list(test_images), errors="skip")
    probed = classifier.predict(probes, errors="skip")
    threshold = float(classifier.detector["threshold"])
    test_scores, probe_scores = test.ood_scores, probed.ood_scores
    labels = np.r_[np.zeros(len(test_scores)), np.ones(len(probe_scores))]
    by_kind: Dict[str, Dict[str, float]] = {}
    kinds_array = np.asarray(kinds)
    for kind in dict.fromkeys(kinds):
        rows = kinds_array == kind
        by_kind[kind] = {"n": int(rows.sum()), "detector": _share(probe_scores[rows] > threshold),
                         "flagged": _share(~probed.in_distribution[rows])}
    return {
        "method": ood.METHOD, "threshold": threshold, "accept": ood.ACCEPT,
        "stages": len(classifier.detector["whiten"]),
        "features": int(sum(w.shape[0] for w in classifier.detector["whiten"])),
        "auroc_vs_probes": float(auroc(labels, np.r_[test_scores, probe_scores])),
        "test": {"n": len(test_scores), "detector": _share(test_scores > threshold),
                 "flagged": _share(~test.in_distribution)},
        "probes": {"n": len(probe_scores), "detector": _share(probe_scores > threshold),
                   "flagged": _share(~probed.in_distribution)},
        "by_kind": by_kind,
    }


WEAK = "the out-of-distribution detector is weak"


def warnings(measured: Optional[Dict[str, Any]]) -> List[str]:
    """A warning when the detector barely tells the probe set from the test images."""
    if not measured or measured["auroc_vs_probes"] >= WEAK_AUROC:
        return []
    return [f"{WEAK}: AUROC {measured['auroc_vs_probes']:.3f} (below "
            f"{WEAK_AUROC}) between the test images and generated non-radiographs; it flags "
            f"{measured['probes']['detector']:.0%} of them. Do not rely on it to refuse what is not an X-ray."]


def refreshed(run_warnings: List[str], measured: Dict[str, Any]) -> List[str]:
    """A run's warnings with the detector's replaced by those of a new measurement."""
    return [w for w in run_warnings if not w.startswith(WEAK)] + warnings(measured)
