"""Leakage audit: exact and near-duplicate X-rays within and across splits.

    fracjax audit --dataset fracture_xray --data-dir D --json audit.json --clean-test

Robust to flips and 90-degree rotations (the 8 symmetries of the square),
resizing, small crops (up to ~12% per side) and brightness/contrast changes.
Two stages:

1. Candidates: every image's 8 symmetric variants, box-downsampled to 12x12
   and normalised (zero mean, unit norm), against every other image's
   upright thumbnail; each image keeps its ``candidates`` most similar
   partners above ``coarse_min``.
2. Verification: the pair, put in the same orientation, is compared at 128x128
   after a band-pass filter and local contrast normalisation (so fine detail
   such as noise and thin lines counts as much as the strong edges that any two
   radiographs of a long bone share), searching the crop scale and offset
   with FFT cross-correlation; the similarity is the best normalised
   cross-correlation, 1.0 for an exact copy. Pairs at or above ``threshold``
   are reported.

On the synthetic set with planted transformed copies the defaults reach
precision 1.0 and recall about 0.95 (``benchmarks/audit_synthetic.py``).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fracjax.data.io import gaussian_blur
from fracjax.data.splits import SPLITS


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    coarse_size: int = 12
    candidates: int = 8  # per image, before verification
    coarse_min: float = 0.5  # skip verification below this thumbnail similarity
    verify_size: int = 128
    max_crop: float = 0.12  # largest crop (fraction of a side) searched
    crop_steps: int = 5
    threshold: float = 0.5
    workers: int = 0  # 0: one per CPU core (at most 8)


# --------------------------------------------------------------------------
# Image operations (numpy only).
# --------------------------------------------------------------------------


def _grey(image) -> np.ndarray:
    x = np.asarray(image)
    if x.ndim == 3:
        x = x[..., 0] if x.shape[-1] == 1 else x.mean(axis=-1)
    return x.astype(np.float32)


def _box_resize(x: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging resize of a 2-D float array (antialiased)."""
    from PIL import Image

    return np.asarray(Image.fromarray(x.astype(np.float32), mode="F").resize((size, size), Image.BOX), np.float32)


def _bilinear(x: np.ndarray, size: int) -> np.ndarray:
    from fracjax.data.io import resize_bilinear

    return resize_bilinear(x[..., None], (size, size))[..., 0]


def symmetries(x: np.ndarray) -> List[np.ndarray]:
    """The 8 symmetries of the square: rotations by 0/90/180/270, each also flipped."""
    out = []
    for k in range(4):
        r = np.rot90(x, k)
        out += [r, r[:, ::-1]]
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    return x / (np.linalg.norm(x) + 1e-6)


def thumbnail(image, size: int = 12) -> np.ndarray:
    return _unit(_box_resize(_grey(image), size)).ravel()


def _detail(x: np.ndarray) -> np.ndarray:
    """Band-pass then local contrast normalisation."""
    band = gaussian_blur(x, 0.6) - gaussian_blur(x, 2.0)
    return band / np.sqrt(gaussian_blur(band * band, 4.0) + 1.0)


def _best_ncc(big: np.ndarray, small: np.ndarray) -> float:
    """The best normalised cross-correlation of ``small`` placed anywhere inside ``big``."""
    H, W = big.shape
    h, w = small.shape
    s = small - small.mean()
    s /= np.linalg.norm(s) + 1e-9
    corr = np.fft.irfft2(np.fft.rfft2(big) * np.conj(np.fft.rfft2(s, big.shape)), big.shape)[: H - h + 1, : W - w + 1]
    ii = np.pad(np.cumsum(np.cumsum(big, 0), 1), ((1, 0), (1, 0)))
    ii2 = np.pad(np.cumsum(np.cumsum(big * big, 0), 1), ((1, 0), (1, 0)))

    def box(t):
        return t[h:, w:] - t[:-h, w:] - t[h:, :-w] + t[:-h, :-w]

    var = np.maximum(box(ii2) - box(ii) ** 2 / (h * w), 1e-6)
    return float(np.max(corr / np.sqrt(var)))


def verify_pair(a, b, config: AuditConfig = AuditConfig()) -> float:
    """Similarity of two images already in the same orientation, allowing
    either to be a resized crop of the other."""
    size = config.verify_size
    margin = max(1, int(round(size * config.max_crop / 2)))
    ga, gb = _grey(a), _grey(b)
    best = -1.0
    scales = np.linspace(1.0, 1.0 + config.max_crop, config.crop_steps)
    for big_img, small_img in ((ga, gb), (gb, ga)):
        small = _detail(_bilinear(small_img, size))[margin:-margin, margin:-margin]
        for f in scales:
            big = _detail(_bilinear(big_img, int(round(size * f))))
            best = max(best, _best_ncc(big, small))
    return best


# --------------------------------------------------------------------------
# The audit.
# --------------------------------------------------------------------------


def candidate_pairs(images: Sequence, config: AuditConfig = AuditConfig()) -> Dict[Tuple[int, int], Tuple[float, int]]:
    """{(i, j): (thumbnail similarity, symmetry g)} with i < j, where the g-th
    symmetry of image j matches image i."""
    n = len(images)
    upright = np.stack([thumbnail(im, config.coarse_size) for im in images])
    s = config.coarse_size
    variants = np.stack([np.stack([v.ravel() for v in symmetries(u.reshape(s, s))]) for u in upright])  # (n, 8, d)
    pairs: Dict[Tuple[int, int], Tuple[float, int]] = {}
    k = min(config.candidates, n - 1)
    if k < 1:
        return pairs
    for start in range(0, n, 256):
        block = variants[start : start + 256]  # queries j, all symmetries
        sims = np.einsum("jgd,id->jgi", block, upright)  # (b, 8, n)
        best_g = sims.argmax(1)
        best = sims.max(1)
        for row in range(len(block)):
            j = start + row
            best[row, j] = -np.inf
            top = np.argpartition(-best[row], k - 1)[:k]
            for i in top:
                score = float(best[row, i])
                if score < config.coarse_min:
                    continue
                key = (min(i, j), max(i, j))
                # Keep the symmetry that maps the second image onto the first.
                g = int(best_g[row, i]) if i < j else _inverse_symmetry(int(best_g[row, i]))
                if key not in pairs or pairs[key][0] < score:
                    pairs[key] = (score, g)
    return pairs


def _inverse_symmetry(g: int) -> int:
    """Index of the inverse of symmetry g in :func:`symmetries`' order."""
    probe = np.arange(9.0).reshape(3, 3)
    moved = symmetries(probe)[g]
    for h, back in enumerate(symmetries(moved)):
        if np.array_equal(back, probe):
            return h
    raise AssertionError("symmetry group is closed")


def _verify_job(job):
    a, b, g, config = job
    return verify_pair(a, symmetries(_grey(b))[g], config)


def _map(fn, jobs, workers: int):
    if workers <= 1 or len(jobs) < 32:
        return [fn(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(fn, jobs, chunksize=8))


def _exact_key(image) -> Tuple:
    """Equal for pixel-identical images; every constant (blank) image of one
    value gets one key whatever its size: thumbnails of blank images carry no
    signal, so the similarity stage cannot see them."""
    x = np.asarray(image)
    if x.size and x.min() == x.max():
        return ("constant", x.reshape(-1)[0].item())
    return ("pixels", x.shape, x.dtype.str, hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())


def exact_duplicates(images: Sequence) -> List[Tuple[int, int]]:
    """(i, j), i < j, for every pair of pixel-identical (or equally blank) images."""
    groups: Dict[Tuple, List[int]] = collections.defaultdict(list)
    for i, image in enumerate(images):
        groups[_exact_key(image)].append(i)
    return [(a, b) for members in groups.values() for k, a in enumerate(members) for b in members[k + 1:]]


def find_duplicates(images: Sequence, config: AuditConfig = AuditConfig()) -> List[Tuple[int, int, float]]:
    """(i, j, similarity) for every exact (1.0) or verified near-duplicate pair, i < j."""
    exact = set(exact_duplicates(images))
    candidates = {key: value for key, value in candidate_pairs(images, config).items() if key not in exact}
    keys = sorted(candidates)
    workers = config.workers or max(1, min(8, os.cpu_count() or 1))
    jobs = [(images[i], images[j], candidates[(i, j)][1], config) for i, j in keys]
    scores = _map(_verify_job, jobs, workers)
    near = [(i, j, float(s)) for (i, j), s in zip(keys, scores, strict=True) if s >= config.threshold]
    return sorted([(i, j, 1.0) for i, j in exact] + near)


@dataclasses.dataclass
class AuditReport:
    pairs: List[dict]
    counts: Dict[str, int]
    num_examples: Dict[str, int]
    clean_test: Optional[List[str]] = None
    config: Optional[dict] = None

    def to_json(self) -> dict:
        out = {"pairs": self.pairs, "counts": self.counts, "num_examples": self.num_examples, "config": self.config}
        if self.clean_test is not None:
            out["clean_test"] = self.clean_test
        return out

    def summary(self) -> str:
        lines = ["near-duplicate pairs by split pair:" if self.counts else "no near-duplicate pairs found"]
        for key, count in sorted(self.counts.items()):
            lines.append(f"  {key:<24} {count}")
        if self.clean_test is not None:
            total = self.num_examples.get("test", 0)
            lines.append(f"clean test: {len(self.clean_test)} of {total} test examples have no near-copy "
                         "in train or validation")
        return "\n".join(lines)


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def transformed_copy(image, rng: np.random.Generator, max_crop: float = 0.1) -> np.ndarray:
    """A near-copy of ``image`` as data sets hold them: a random symmetry of the
    square, maybe a crop of up to ``max_crop`` per side, resized to a random
    size, with brightness and contrast changed. Returns (S, S, 1) uint8."""
    x = _grey(image)
    x = symmetries(x)[int(rng.integers(8))]
    if rng.random() < 0.7:
        h, w = x.shape
        f = rng.uniform(0.02, max_crop)
        dy, dx = int(f * h * rng.random()), int(f * w * rng.random())
        x = x[dy : h - int(f * h) + dy, dx : w - int(f * w) + dx]
    size = int(rng.choice([160, 224, 300]))
    x = _bilinear(x, size)
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)[..., None]


def planted_precision_recall(
    images: Sequence, num_copies: int, seed: int = 0, config: AuditConfig = AuditConfig()
) -> dict:
    """Plant ``num_copies`` transformed copies among ``images`` (assumed
    distinct), audit, and score the found pairs against the planted ones."""
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(images), size=num_copies, replace=False)
    pool = list(images) + [transformed_copy(images[i], rng) for i in sources]
    truth = {(int(i), len(images) + k) for k, i in enumerate(sources)}
    found = {(i, j) for i, j, _ in find_duplicates(pool, config)}
    hits = len(found & truth)
    return {
        "images": len(images),
        "planted": num_copies,
        "found": len(found),
        "true_positives": hits,
        "precision": hits / len(found) if found else 1.0,
        "recall": hits / num_copies,
    }


def _filename(example, index: int) -> str:
    name = example.get("filename", None) if isinstance(example, Mapping) else None
    if name is None:
        return f"{index:05d}"
    return name.decode() if isinstance(name, bytes) else str(name)


def audit(splits: Mapping[str, object], config: AuditConfig = AuditConfig(), clean_test: bool = False) -> AuditReport:
    """Audit ``{split name: source}``; a source is indexable, yielding dicts with
    ``image`` (and ``filename``), e.g. a ``tfds.data_source`` split or a
    :class:`fracjax.data.pipeline.ArraySource`."""
    empty = [split for split, source in splits.items() if len(source) == 0]
    if empty or not splits:
        raise ValueError(f"nothing to audit in split(s) {empty or list(splits)}: "
                         f"{', '.join(f'{s} {len(src)}' for s, src in splits.items()) or 'no splits'} examples")
    images, where = [], []
    for split, source in splits.items():
        for i in range(len(source)):
            example = source[i]
            images.append(np.asarray(example["image"]))
            where.append({"split": split, "filename": _filename(example, i)})
    found = find_duplicates(images, config)
    pairs, counts = [], collections.Counter()
    copied_test = set()
    for i, j, sim in sorted(found, key=lambda t: -t[2]):
        a, b = where[i], where[j]
        if _split_rank(a["split"]) > _split_rank(b["split"]):
            a, b = b, a
        pairs.append({"a": a, "b": b, "similarity": round(sim, 4)})
        counts["/".join((a["split"], b["split"]))] += 1
        for x, y in ((a, b), (b, a)):
            if x["split"] == "test" and y["split"] in ("train", "validation"):
                copied_test.add(x["filename"])
    num = {split: len(source) for split, source in splits.items()}
    clean = None
    if clean_test:
        if "test" not in splits:
            raise ValueError("--clean-test needs a test split")
        clean = [w["filename"] for w in where if w["split"] == "test" and w["filename"] not in copied_test]
    return AuditReport(pairs, dict(counts), num, clean, dataclasses.asdict(config))
