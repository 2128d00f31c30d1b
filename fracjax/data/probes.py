"""A built-in probe set of generated non-radiographs: what a fracture model must refuse.

Made by code from a seed (nothing downloaded), at any size: the kinds of input a served model
meets that are not X-rays. The OOD detector is measured against them (its AUROC against the run's
own test images, and the share of each kind it flags).

Kinds: ``uniform_noise``, ``gaussian_noise``, ``clouds`` (1/f texture, a grey photograph's
statistics), ``gradient``, ``document`` (lines of text on a page), ``shapes`` (filled rectangles
and ellipses), ``stripes`` (checkerboards and bars), ``colour_photo`` (smooth colour regions) and
``blank`` (a constant frame). The last two are also what the input checks catch without a model.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np

Probe = Callable[[np.random.Generator, int], np.ndarray]


def _uniform_noise(rng, size):
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _gaussian_noise(rng, size):
    return np.clip(rng.normal(rng.uniform(60, 190), rng.uniform(15, 60), (size, size)), 0, 255).astype(np.uint8)


def _clouds(rng, size):
    """Noise with a 1/f amplitude spectrum: the statistics of natural photographs."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size) ** rng.uniform(0.8, 1.4)
    phases = np.exp(2j * np.pi * rng.uniform(size=(size, size)))
    field = np.real(np.fft.ifft2(amplitude * phases))
    field = (field - field.min()) / max(field.max() - field.min(), 1e-12)
    return np.round(255 * field).astype(np.uint8)


def _gradient(rng, size):
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    if rng.uniform() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        field = np.cos(angle) * xx + np.sin(angle) * yy
    else:
        cy, cx = rng.uniform(0, 1, 2)
        field = np.hypot(yy - cy, xx - cx)
    field = (field - field.min()) / max(field.max() - field.min(), 1e-12)
    return np.round(255 * field).astype(np.uint8)


def _document(rng, size):
    from PIL import Image, ImageDraw

    page = Image.new("L", (size, size), int(rng.integers(225, 256)))
    draw = ImageDraw.Draw(page)
    words = ["patient", "report", "the", "fracture", "of", "left", "wrist", "no", "acute", "findings", "dated",
             "signed", "page", "1", "2026", "clinic", "and", "view", "lateral", "history"]
    line = max(size // 16, 6)
    for y in range(line, size - line, line):
        text = " ".join(rng.choice(words, int(rng.integers(3, 9))))
        draw.text((int(rng.integers(2, max(3, size // 10))), y), text, fill=int(rng.integers(0, 60)))
    return np.asarray(page)


def _shapes(rng, size):
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size, size), int(rng.integers(0, 256)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = (x0, y0) + rng.integers(max(size // 10, 1), size // 2 + 1, 2)
        shape = draw.rectangle if rng.uniform() < 0.5 else draw.ellipse
        shape((int(x0), int(y0), int(x1), int(y1)), fill=int(rng.integers(0, 256)))
    return np.asarray(canvas)


def _stripes(rng, size):
    period = int(rng.integers(4, max(5, size // 4)))
    yy, xx = np.mgrid[:size, :size]
    pattern = ((xx // period + yy // period) % 2) if rng.uniform() < 0.5 else ((xx // period) % 2)
    low, high = sorted(rng.integers(0, 256, 2))
    return np.where(pattern == 1, high, low).astype(np.uint8)


def _colour_photo(rng, size):
    yy, xx = np.mgrid[:size, :size] / size
    base = rng.uniform(40, 220, 3)
    rgb = base + np.stack([60 * yy, 40 * xx, -50 * yy * xx], axis=-1)
    for _ in range(int(rng.integers(3, 7))):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.35)
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = rng.uniform(0, 255, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _blank(rng, size):
    return np.full((size, size), int(rng.integers(0, 256)), np.uint8)


KINDS: Dict[str, Probe] = {
    "uniform_noise": _uniform_noise, "gaussian_noise": _gaussian_noise, "clouds": _clouds,
    "gradient": _gradient, "document": _document, "shapes": _shapes, "stripes": _stripes,
    "colour_photo": _colour_photo, "blank": _blank,
}


def probe_set(size: int, per_kind: int = 8, seed: int = 0) -> Tuple[List[np.ndarray], List[str]]:
    """(images, their kinds): ``per_kind`` seeded images of each kind, (size, size) grey or
    (size, size, 3) colour uint8, as ``Classifier.predict`` takes them."""
    if size < 8 or per_kind < 1:
        raise ValueError(f"probe_set needs size >= 8 and per_kind >= 1, got {size} and {per_kind}")
    images, kinds = [], []
    for k, (kind, make) in enumerate(KINDS.items()):
        for i in range(per_kind):
            images.append(make(np.random.default_rng([seed, k, i]), size))
            kinds.append(kind)
    return images, kinds
