"""Which out-of-distribution score tells generated non-radiographs from a run's test X-rays best?

    python benchmarks/ood.py runs/mobilenet_v3_small_hybrid [--train 4000] [--per-kind 16]

Fits each candidate on the run's training split (a seeded sample), sets its threshold to accept
99% of validation, and prints, for each: AUROC against the probe set (fracjax.data.probes), the
share of test images flagged and the share of each probe kind flagged (the detector alone; the
input checks catch colour and blank frames before it). The candidates: fracjax.ood's detector
(Mahalanobis at each backbone stage read, the largest validation-scaled score), the same on the
last stage alone, and for reference the logit's confidence (-|logit|) and the two-class energy
(-softplus(logit)), which need no fit.
Figures go to benchmarks/NOTES.md.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fracjax import ood  # noqa: E402
from fracjax.data.pipeline import load_source  # noqa: E402
from fracjax.data.probes import probe_set  # noqa: E402
from fracjax.deploy.card import run_folder_of, trained_on  # noqa: E402
from fracjax.evaluation import detector  # noqa: E402
from fracjax.inference import Classifier  # noqa: E402
from fracjax.metrics import auroc  # noqa: E402


def arrays(source, indices):
    images = [np.asarray(source[int(i)]["image"]) for i in indices]
    labels = np.array([int(source[int(i)]["label"]) for i in indices])
    return images, labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--train", type=int, default=detector.MAX_TRAIN)
    parser.add_argument("--per-kind", type=int, default=16)
    args = parser.parse_args(argv)
    clf = Classifier.from_checkpoint(args.run)
    data = trained_on(run_folder_of(clf.checkpoint))
    sources = {s: load_source(data["dataset"], s, data["data_dir"]) for s in ("train", "validation", "test")}
    train, train_labels = arrays(sources["train"], detector.sample(len(sources["train"]), args.train))
    validation, _ = arrays(sources["validation"], range(len(sources["validation"])))
    test, _ = arrays(sources["test"], range(len(sources["test"])))
    probes, kinds = probe_set(clf.image_size, args.per_kind)
    grey = [p if p.ndim == 2 else p.mean(axis=-1).astype(np.uint8) for p in probes]  # the model sees grey
    out = {name: clf._run(images, "raise", {}) for name, images in
           (("train", train), ("validation", validation), ("test", test), ("probes", grey))}
    candidates = {}
    for name, chosen in ((f"every stage read ({len(out['train'][1])}), max of scaled", slice(None)),
                         ("the last stage alone", slice(-1, None))):
        fitted = ood.with_threshold(ood.fit(out["train"][1][chosen], train_labels), out["validation"][1][chosen])
        candidates[name] = lambda split, d=fitted, c=chosen: np.asarray(ood.scores(d, out[split][1][c]))
    candidates["confidence -|logit|"] = lambda split: -np.abs(out[split][0])
    candidates["energy -softplus(logit)"] = lambda split: -np.logaddexp(0.0, out[split][0])
    print(f"{args.run}: {clf.spec['model']} {clf.image_size} px; train sample {len(train)}, validation "
          f"{len(validation)}, test {len(test)}, probes {len(grey)} ({args.per_kind} per kind, colour ones as grey)")
    kinds_array = np.asarray(kinds)
    header = ["score", "AUROC vs probes", "test flagged"] + list(dict.fromkeys(kinds))
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, score in candidates.items():
        threshold = np.quantile(score("validation"), ood.ACCEPT, method="higher")
        test_scores, probe_scores = score("test"), score("probes")
        value = auroc(np.r_[np.zeros(len(test_scores)), np.ones(len(probe_scores))], np.r_[test_scores, probe_scores])
        cells = [name, f"{value:.3f}", f"{np.mean(test_scores > threshold):.3f}"]
        cells += [f"{np.mean(probe_scores[kinds_array == k] > threshold):.2f}" for k in dict.fromkeys(kinds)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
