"""``fracjax.evaluate``: every metric with bootstrap intervals, on the whole
test split and, given a leakage audit, on its clean subset side by side.

    clf = fracjax.Classifier.from_checkpoint("runs/mobilenet_v3_small_hybrid")
    result = fracjax.evaluate(clf, "synthetic_fracture", split="test", audit="audit.json")
    print(result.table())
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from fracjax.checkpoint import find_model_checkpoint, write_calibration, write_run_warnings
from fracjax.evaluation import detector, localisation, stats, studies, tables
from fracjax.evaluation.calibration import calibrate
from fracjax.evaluation.report import run_report
from fracjax.inference import Classifier
from fracjax.metrics import bce_from_logits, probabilities_from_logits
from fracjax.metrics import jsonable as _jsonable


@dataclasses.dataclass
class EvaluationResult:
    """Predictions and metrics of one split (and its clean subset)."""

    split: str
    labels: np.ndarray
    probabilities: np.ndarray  # float64, temperature-scaled when ``calibrated``
    filenames: List[str]
    threshold: float
    metrics: Dict[str, Any]
    clean: Optional[Dict[str, Any]] = None  # the same metrics on the clean subset
    clean_mask: Optional[np.ndarray] = None  # which examples are clean
    calibrated: bool = False
    logits: Optional[np.ndarray] = None  # the model's raw logits (what AUROC ranks)
    calibration: Optional[Dict[str, Any]] = None  # what the temperature was fitted on, if known
    ood: Optional[Dict[str, Any]] = None  # the OOD detector measured against the probe set (evaluation.detector)
    fields: Dict[str, list] = dataclasses.field(default_factory=dict)  # patient, study, body part, boxes
    cluster: Optional[str] = None  # the field the bootstrap resampled (patient, study) or None: images
    subgroups: Optional[Dict[str, Dict[str, Any]]] = None  # per body part/region, then "all"
    studies: Optional[Dict[str, Any]] = None  # study-level: {"how", "n", "by": {part or "all": metrics}}
    localisation: Optional[Dict[str, Dict[str, Any]]] = None  # {method: pointing game, energy inside}

    def to_json(self, with_predictions: bool = False) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "split": self.split,
            "threshold": self.threshold,
            "calibrated": self.calibrated,
            "metrics": _jsonable(self.metrics),
            "warnings": self.warnings(),
        }
        if self.clean is not None:
            out["clean"] = _jsonable(self.clean)
        out["cluster"] = self.cluster
        for name in ("subgroups", "studies", "localisation", "ood"):
            if getattr(self, name) is not None:
                out[name] = _jsonable(getattr(self, name))
        if with_predictions:
            logits = self.logits if self.logits is not None else [None] * len(self.labels)
            out["predictions"] = [
                {"filename": f, "label": int(y), "probability": float(p), "logit": None if z is None else float(z)}
                for f, y, p, z in zip(self.filenames, self.labels, self.probabilities, logits, strict=True)
            ]
        return out

    def warnings(self) -> List[str]:
        """What a reader must know before trusting these numbers."""
        out = []
        columns = [(self.split, self.metrics)] + ([(f"clean {self.split}", self.clean)] if self.clean else [])
        for name, m in columns:
            out.extend(stats.chance_warnings(m, name))
            out.extend(stats.sample_warnings(m, name))
        if self.calibration:
            out.extend(stats.calibration_warnings(self.calibration))
        if self.studies and "error" in self.studies:
            out.append(f"no study-level metrics: {self.studies['error']}")
        return out + detector.warnings(self.ood)

    def table(self, digits: int = 3) -> str:
        """A markdown table: metric | this split [| clean subset], values with
        their intervals, warnings above it, then the extra tables
        (:func:`fracjax.evaluation.tables.markdown`)."""
        return tables.markdown(self, digits)


def clean_filenames(audit: Any, split: str = "test") -> Optional[set]:
    """The clean examples of ``split`` by filename, from an audit given as an
    :class:`fracjax.data.audit.AuditReport`, its JSON dict, a path to that
    JSON, or an iterable of filenames. None when ``audit`` is None.

    Without a ``clean_test`` list, the clean examples are those of ``split``
    in no pair with another split (computed against the data in
    :func:`evaluate`)."""
    if audit is None:
        return None
    if isinstance(audit, (str, os.PathLike)):
        path = os.fspath(audit)
        if not os.path.exists(path):
            raise FileNotFoundError(f"audit: no such file {path}")
        with open(path) as f:
            try:
                audit = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"audit: {path} is not JSON ({err})") from None
    if hasattr(audit, "to_json"):
        audit = audit.to_json()
    if isinstance(audit, dict):
        if audit.get("clean_test") is not None and split == "test":
            return set(audit["clean_test"])
        if "pairs" not in audit:
            raise ValueError("audit: expected the JSON of `fracjax audit` (with 'pairs')")
        return _Copied({pair[side]["filename"] for pair in audit["pairs"] for side in ("a", "b")
                        if pair[side]["split"] == split and pair["a"]["split"] != pair["b"]["split"]})
    return set(audit)


class _Copied(set):
    """Filenames of ``split`` with a near-copy in another split (the
    complement is clean)."""


class Examples(NamedTuple):
    images: Any  # iterable of (H, W[, C]) arrays
    labels: np.ndarray
    filenames: List[str]
    fields: Dict[str, list]  # what else is known of each example (patient, study, body_part, boxes)


def _examples(data, split: str, data_dir: Optional[str]) -> Examples:
    """The examples of a data set name or a mapping of split -> source (``split``: one split, several
    joined with ``+``, or ``all``), a source (indexable dicts with image/label[/filename/fields]) or
    ``(images, labels[, filenames[, fields]])``."""
    from fracjax.data.pipeline import CORE_FEATURES, as_text, field_value, split_names
    from fracjax.data.prepare import available_splits, load_source

    if isinstance(data, str):
        names = split_names(split, available_splits(data, data_dir))
        return _joined([_examples(load_source(data, name, data_dir), name, None) for name in names])
    if isinstance(data, dict):  # as a builder's as_data_source() gives
        return _joined([_examples(data[name], name, None) for name in split_names(split, list(data))])
    if isinstance(data, tuple):
        images, labels = data[0], np.asarray(data[1])
        filenames = list(data[2]) if len(data) > 2 else [f"{i:05d}" for i in range(len(labels))]
        fields = {k: list(v) for k, v in (data[3] if len(data) > 3 else {}).items()}
        lengths = {len(images), len(filenames), *(len(v) for v in fields.values())}
        if lengths != {len(labels)}:
            raise ValueError(f"images ({len(images)}), labels ({len(labels)}), filenames and fields differ in length")
        return Examples((images[i] for i in range(len(labels))), labels.astype(np.int64),
                        [str(f) for f in filenames], fields)
    n = len(data)
    images, labels, filenames, fields = [], np.empty((n,), np.int64), [], {}
    for i in range(n):  # decoded once: evaluation splits fit in memory
        ex = data[i]
        images.append(np.asarray(ex["image"]))
        labels[i] = int(ex["label"])
        name = ex.get("filename", f"{i:05d}") if hasattr(ex, "get") else f"{i:05d}"
        filenames.append(as_text(name))
        for key in (k for k in ex if k not in CORE_FEATURES) if hasattr(ex, "keys") else ():
            fields.setdefault(key, []).append(field_value(ex[key]))
    return Examples(images, labels, filenames, fields)


def _joined(parts: List[Examples]) -> Examples:
    """Several splits' examples as one (the fields every part has)."""
    if len(parts) == 1:
        return parts[0]
    images = [image for part in parts for image in part.images]
    keys = set.intersection(*(set(part.fields) for part in parts))
    return Examples(images, np.concatenate([part.labels for part in parts]),
                    [name for part in parts for name in part.filenames],
                    {key: [value for part in parts for value in part.fields[key]] for key in sorted(keys)})


CLUSTER_BY = ("auto", "patient", "study", "none")


def evaluate(
    classifier,
    data,
    split: str = "test",
    *,
    data_dir: Optional[str] = None,
    audit: Any = None,
    threshold: Union[None, float, str] = None,
    calibrated: bool = True,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    cluster_by: str = "auto",
    study_aggregate: str = "mean",
    localise: bool = True,
) -> EvaluationResult:
    """Evaluate ``classifier`` (a :class:`fracjax.Classifier` or a path to a
    run/checkpoint) on ``data``: a prepared TFDS data set name (with
    ``split`` and ``data_dir``), a source, or ``(images, labels[, filenames[,
    fields]])``.

    ``threshold``: a number, a named operating point of the checkpoint
    (``"youden"``, ``"sensitivity_0.95"``: chosen on validation), or None for
    the saved decision threshold. ``audit``: the leakage audit (see
    :func:`clean_filenames`); its clean examples get their own metrics.
    ``calibrated``: use the temperature fitted on validation, if any.

    What the data set knows of each example adds to the result: ``patient``
    (or ``study``) ids make the bootstrap resample patients (``cluster_by``:
    ``"auto"`` takes the patient, else the study; ``"none"`` resamples images);
    ``body_part`` gives a row per part; ``study`` gives study-level metrics
    (``study_aggregate``: ``"mean"`` or ``"max"`` of the images' probabilities);
    ``boxes`` give the pointing game and energy inside the boxes of Grad-CAM and
    Grad-CAM++ on the true positives (``localise=False`` skips it)."""

    if cluster_by not in CLUSTER_BY:
        raise ValueError(f"cluster_by must be one of {CLUSTER_BY}, got {cluster_by!r}")
    if study_aggregate not in studies.AGGREGATES:
        raise ValueError(f"study_aggregate must be one of {studies.AGGREGATES}, got {study_aggregate!r}")
    if isinstance(classifier, (str, os.PathLike)):
        classifier = Classifier.from_checkpoint(classifier)
    threshold = _decision_threshold(classifier, threshold)
    images, labels, filenames, fields = _examples(data, split, data_dir)
    if len(labels) == 0:
        raise ValueError(f"split {split!r} holds no examples")
    cluster = _cluster_field(fields, cluster_by)  # before the model runs: a wrong cluster_by is refused first
    images = list(images)
    logits = classifier.logits(images).astype(np.float64)
    result, metrics_of = _scored(classifier, split, labels, logits, filenames, fields, cluster, threshold,
                                 calibrated, dict(samples=bootstrap, level=level, seed=seed))
    _add_clean(result, audit, split, metrics_of)
    _add_groups_and_studies(result, study_aggregate, dict(threshold=threshold, samples=bootstrap, seed=seed))
    if localise and _known(fields, "boxes", empty_ok=True):
        result.localisation = _localisation(classifier, images, fields["boxes"], result.probabilities >= threshold,
                                            labels, samples=bootstrap, level=level, seed=seed)
    return result


def _decision_threshold(classifier, threshold: Union[None, float, str]) -> float:
    """A number, a named operating point of the checkpoint, or None: the saved threshold; in (0, 1]."""
    if isinstance(threshold, str):
        threshold = classifier.threshold_for(threshold)
    elif threshold is None:
        threshold = classifier.threshold
    if not 0.0 < float(threshold) < 1.0 + 1e-9:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return float(threshold)


def _scored(classifier, split, labels, logits, filenames, fields, cluster, threshold, calibrated, interval):
    """The result of one split's logits (its metrics with intervals), and the
    function that gives the same metrics for a subset (``interval``: the
    bootstrap's samples, level and seed)."""
    temperature = classifier.temperature if calibrated else 1.0
    groups = _cluster_groups(fields, cluster)

    def metrics_of(mask):
        return stats.metrics_with_intervals(
            labels[mask], probabilities_from_logits(logits[mask], temperature), threshold, scores=logits[mask],
            loss=bce_from_logits(labels[mask], logits[mask]), groups=None if groups is None else groups[mask],
            **interval)

    everything = np.ones(len(labels), bool)
    result = EvaluationResult(split, labels, probabilities_from_logits(logits, temperature), filenames, threshold,
                              metrics_of(everything), calibrated=temperature != 1.0, logits=logits,
                              calibration=classifier.calibration or None, fields=fields, cluster=cluster)
    return result, metrics_of


def _add_groups_and_studies(result: EvaluationResult, study_aggregate: str, options: Dict[str, Any]) -> None:
    """Rows per body part and study-level metrics, where the data set knows them."""
    fields, labels, probabilities = result.fields, result.labels, result.probabilities
    groups = _cluster_groups(fields, result.cluster)
    if _known(fields, "body_part"):
        parts = [str(p) or "unknown" for p in fields["body_part"]]
        result.subgroups = studies.subgroup_metrics(parts, labels, probabilities, groups=groups, **options)
    if _known(fields, "study"):
        result.studies = _study_rows(fields, labels, probabilities, study_aggregate, result.cluster, options)


def _cluster_groups(fields: Dict[str, list], cluster: Optional[str]) -> Optional[np.ndarray]:
    """Each example's group id for the cluster bootstrap (None: resample images)."""
    return np.asarray(_ids(fields[cluster]), dtype=object) if cluster else None


def _ids(values: Sequence) -> List[str]:
    """Group ids with the unknown ones ("") each a group of its own, never one
    group of every example whose patient or study is unknown."""
    return [str(v) if str(v) != "" else f"(unknown #{i})" for i, v in enumerate(values)]


def _known(fields: Dict[str, list], name: str, empty_ok: bool = False) -> bool:
    """Whether the data set knows ``name`` for its examples (a text field
    left empty, "", for every example counts as unknown)."""
    values = fields.get(name)
    if not values:
        return False
    return empty_ok or any(str(v) != "" for v in values)


def _cluster_field(fields: Dict[str, list], cluster_by: str) -> Optional[str]:
    if cluster_by == "none":
        return None
    wanted = ("patient", "study") if cluster_by == "auto" else (cluster_by,)
    for name in wanted:
        if _known(fields, name):
            return name
    if cluster_by != "auto":
        raise ValueError(f"cluster_by={cluster_by!r}: this data set has no {cluster_by} ids")
    return None


def _add_clean(result: EvaluationResult, audit, split: str, metrics_of) -> None:
    names = clean_filenames(audit, split)
    if names is None:
        return
    filenames = result.filenames
    if isinstance(names, _Copied):
        mask = np.array([f not in names for f in filenames])
    else:
        unknown = names - set(filenames)
        if names and len(unknown) == len(names):
            raise ValueError(f"audit: none of its {len(names)} clean filenames is in split {result.split!r}")
        mask = np.array([f in names for f in filenames])
    result.clean_mask = mask
    result.clean = metrics_of(mask) if mask.any() else {"n": 0}


def _study_rows(fields, labels, probabilities, how: str, cluster: Optional[str], options) -> Dict[str, Any]:
    """Study-level metrics, overall and per body part (MURA's table)."""
    try:
        rows = studies.study_level(_ids(fields["study"]), labels, probabilities, how)
    except ValueError as err:  # a study labelled both ways (a user's CSV may have one): no study rows, said
        return {"how": how, "error": str(err)}
    first = rows.first
    parts = [str(fields["body_part"][i]) or "unknown" for i in first] if _known(fields, "body_part") else None
    patients = _ids(fields["patient"]) if cluster == "patient" else None
    groups = [patients[i] for i in first] if patients else None
    if parts:
        by = studies.subgroup_metrics(parts, rows.labels, rows.probabilities, groups=groups, **options)
    else:
        by = {"all": stats.metrics_with_intervals(rows.labels, rows.probabilities, options["threshold"],
                                                  samples=options["samples"], seed=options["seed"], groups=groups)}
    return {"how": how, "n": len(first), "images": int(len(labels)), "by": by}


POINTING_TOLERANCE_224 = 15.0  # pixels at 224 px (Zhang et al.'s pointing game), scaled to the model's size


def _localisation(classifier, images, boxes, predicted, labels, samples: int, level: float, seed: int):
    """Pointing game and energy inside the boxes for the true positives that
    have boxes, per saliency method."""
    from fracjax.evaluation import gradcam

    chosen = [i for i in range(len(labels)) if labels[i] == 1 and predicted[i] and np.size(boxes[i])]
    maps = gradcam.explain_methods_in_chunks(classifier, [images[i] for i in chosen])["maps"] if chosen else {}
    tolerance = POINTING_TOLERANCE_224 * classifier.image_size / 224.0
    return {method: localisation.localisation_scores(maps.get(method, []), [boxes[i] for i in chosen],
                                                     tolerance=tolerance, samples=samples, level=level, seed=seed)
            for method in gradcam.METHODS}


def calibrate_checkpoint(path: str, data, split: str = "validation", data_dir: Optional[str] = None,
                         which: str = "best", classifier=None, **kwargs) -> Dict[str, Any]:
    """Fit temperature scaling and operating points on ``split`` (validation)
    and save them inside the checkpoint's step folder (``calibration.json``),
    where :meth:`fracjax.Classifier.from_checkpoint` finds them. ``classifier``:
    that checkpoint already restored (it gets the calibration too)."""

    folder, step = find_model_checkpoint(path, which)
    if classifier is None:
        classifier = Classifier.from_checkpoint(os.path.join(folder, str(step)))
    images, labels, _, _ = _examples(data, split, data_dir)
    calibration = calibrate(labels, classifier.logits(list(images)), **kwargs)
    calibration["fitted_on"]["split"] = split
    write_calibration(os.path.join(folder, str(step)), calibration)
    classifier.set_calibration(calibration)
    return calibration


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """What :func:`evaluate_run` did at the end of a run."""

    result: EvaluationResult  # the test split's
    calibration: Optional[Dict[str, Any]]  # temperature and operating points fitted on validation, or None
    classifier: Classifier  # the best checkpoint, restored as users restore it
    report: Optional[str]  # report.html's path, or None


def evaluate_run(
    run_dir: str,
    validation,
    test,
    *,
    audit: Any = None,
    history: Optional[List[Dict[str, Any]]] = None,
    report: bool = True,
    calibrate: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
    gradcam_per_group: int = 4,
    log=None,
    train=None,
    split_kind: Optional[str] = None,
) -> RunEvaluation:
    """The end of a run, through the same ``Classifier`` that users restore
    (so its numbers are the ones ``fracjax.evaluate`` gives): fit temperature
    scaling and operating points on ``validation`` (saved in the best
    checkpoint; ``calibrate=False`` skips it), fit the OOD detector on
    ``train`` (given) with its threshold on ``validation`` (saved there too)
    and measure it against the probe set, evaluate ``test`` with intervals
    (and clean test, given an audit), write ``evaluation.json`` and, with
    ``report``, ``report.html``. ``validation``/``test``/``train``: sources or
    (images, labels[, filenames]). ``log``: called with a line per stage.
    ``split_kind``: the prepared data set's ``info.metadata["split"]["kind"]``, said in the report."""

    say = log or (lambda message: None)
    # One restore and one compiled forward for calibration, test and Grad-CAM.
    classifier = Classifier.from_checkpoint(run_dir)
    calibration = None
    if calibrate:
        say("fitting temperature scaling and operating points on validation ...")
        calibration = calibrate_checkpoint(run_dir, validation, classifier=classifier)
    if train is not None:
        say("fitting the out-of-distribution detector on train, its threshold on validation ...")
        fit_run_detector(classifier, train, validation, seed)
    images, labels, filenames, fields = _examples(test, "test", None)
    boxes = " and Grad-CAM against the fracture boxes" if report and _known(fields, "boxes", empty_ok=True) else ""
    say(f"evaluating test with {bootstrap} bootstrap resamples{boxes} ..." if bootstrap else
        f"evaluating test{boxes} ...")
    images = list(images)
    # The pointing game is a report's extra (two Grad-CAM compilations): not without one.
    result = evaluate(
        classifier,
        (images, labels, filenames, fields),
        "test",
        audit=audit,
        bootstrap=bootstrap,
        seed=seed,
        calibrated=calibrate,
        localise=report,
    )
    if classifier.detector is not None:
        say("measuring the detector against generated non-radiographs ...")
        result.ood = detector.measure(classifier, images, seed=seed)
    with open(os.path.join(run_dir, "evaluation.json"), "w") as f:
        json.dump({"test": result.to_json(with_predictions=True), "calibration": _jsonable(calibration)}, f, indent=1)
    # The warnings travel with the model: predict, export and serve read them from the checkpoint.
    classifier.warnings = result.warnings()
    write_run_warnings(classifier.checkpoint, classifier.warnings)
    path = None
    if report:
        say("writing report.html (figures, Grad-CAM) ...")
        path = run_report(run_dir, classifier, result, history=history, images=np.stack(images),
                          raw_probabilities=probabilities_from_logits(result.logits), calibration=calibration,
                          gradcam_per_group=gradcam_per_group, split_kind=split_kind)
    return RunEvaluation(result=result, calibration=calibration, classifier=classifier, report=path)


def fit_run_detector(classifier, train, validation, seed: int = 0):
    """The OOD detector of ``classifier`` fitted on (a seeded sample of) ``train``, its threshold on
    ``validation``, saved beside its checkpoint."""
    count = len(train[1]) if isinstance(train, tuple) else len(train)
    chosen = detector.sample(count, seed=seed)
    if isinstance(train, tuple):
        subset = ([train[0][int(i)] for i in chosen], np.asarray(train[1])[chosen])
    else:
        subset = [train[int(i)] for i in chosen]
    images, labels, _, _ = _examples(subset, "train", None)
    validation_images = _examples(validation, "validation", None).images
    return detector.fit_detector(classifier, list(images), labels, list(validation_images))
