"""A procedural, seeded generator of radiograph-like images of long bones.

Each image is an X-ray projection: attenuation is summed along the beam
(soft tissue + bones) and mapped to brightness with ``1 - exp(-mu * A)``, so a
bone shows the bright cortical shell and the darker medullary cavity of a
hollow tube, joints show the widened, denser bone ends across a joint space,
and overlapping bones add up.

* Positives (label 1) carry a fracture: a thin, jagged line through the
  shaft and its cortex, at an angle, sometimes displaced or angulated.
* Both classes carry the same confounders at the same rates, so that nothing
  but the fracture tells the label: a second overlapping bone, thin
  vessel-like lines, nutrient canals (a short dark line through one
  cortex), growth-plate-like bands near the bone ends, a lead marker.
* Exposure, contrast, gamma, blur and noise vary per image.

Everything is numpy on a coordinate grid: about 10-20 ms an image at 224.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from fracjax.data.io import gaussian_blur

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
# Attenuation of bone per pixel of path, relative to the image size.
BONE_ATTENUATION = 6.0


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Rates and ranges of the generator (fractions of the image size where
    lengths are concerned)."""

    size: int = 224
    # Width of the fracture gap, in pixels of a 224 image (scaled with size).
    gap_range: Tuple[float, float] = (2.5, 5.0)
    displaced_rate: float = 0.7  # of fractures
    # Sideways shift of the distal fragment, as a fraction of the bone radius.
    shift_range: Tuple[float, float] = (0.15, 0.6)
    angulated_rate: float = 0.25  # of fractures
    overlap_rate: float = 0.45  # a second bone crossing or running beside
    joint_rate: float = 0.6  # a joint in view
    vessel_rate: float = 0.5
    nutrient_canal_rate: float = 0.35
    growth_plate_rate: float = 0.35
    marker_rate: float = 0.5


def _smooth_noise_1d(rng: np.random.Generator, n: int, knots: int, amplitude: float) -> np.ndarray:
    """A random piecewise-linear function sampled at n points."""
    xs = np.linspace(0.0, 1.0, knots)
    ys = rng.normal(0.0, amplitude, knots)
    return np.interp(np.linspace(0.0, 1.0, n), xs, ys)


class _Bone:
    """A hollow long bone along its local u axis from 0 to ``length``.

    ``attenuation(u, v)`` is the projected thickness through cortex and marrow
    at local coordinates (u along the shaft, v across it, in pixels).
    """

    def __init__(self, rng: np.random.Generator, length: float, radius: float, ends: Tuple[bool, bool]):
        self.length = length
        self.radius = radius
        self.inner = rng.uniform(0.5, 0.68)  # medullary radius / outer radius
        self.flare = rng.uniform(0.25, 0.6)  # widening of the bone ends (epiphyses)
        self.flare_len = rng.uniform(1.5, 2.8) * radius
        self.ends = ends  # which ends are in view (rounded) rather than cut by the image border
        self.cortex_density = rng.uniform(0.9, 1.2)
        self.marrow_density = rng.uniform(0.15, 0.3)
        self.cancellous_density = rng.uniform(0.45, 0.7)
        self.end_radius = radius * (1.0 + self.flare)

    def attenuation(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        L, f = self.length, self.flare_len
        near_start = np.exp(-((np.clip(u, 0, L) / f) ** 2)) if self.ends[0] else 0.0
        near_end = np.exp(-(((L - np.clip(u, 0, L)) / f) ** 2)) if self.ends[1] else 0.0
        end_weight = np.maximum(near_start, near_end)
        outer = self.radius * (1.0 + self.flare * end_weight)
        inner = outer * self.inner * (1.0 - 0.25 * end_weight)
        # Rounded (capsule) ends where the end is in view.
        overshoot = u - np.clip(u, 0, L)
        if not self.ends[0]:
            overshoot = np.where(u < 0, 0.0, overshoot)
        if not self.ends[1]:
            overshoot = np.where(u > L, 0.0, overshoot)
        dist2 = v * v + overshoot * overshoot
        chord_outer = 2.0 * np.sqrt(np.maximum(outer * outer - dist2, 0.0))
        chord_inner = 2.0 * np.sqrt(np.maximum(inner * inner - dist2, 0.0))
        # Marrow is sparse along the shaft and denser (cancellous) in the ends.
        marrow = self.marrow_density + (self.cancellous_density - self.marrow_density) * end_weight
        return self.cortex_density * (chord_outer - chord_inner) + marrow * chord_inner


def _local_coords(yy, xx, origin, angle):
    """Image pixels -> (u, v) in a frame at ``origin`` rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - origin[0], xx - origin[1]
    return dx * c + dy * s, -dx * s + dy * c


def _draw_polyline(shape, points, width, rng=None) -> np.ndarray:
    """A soft 0..1 mask of a polyline of the given width (pixels)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    best = np.full(shape, np.inf, np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:], strict=True):
        dy, dx = y1 - y0, x1 - x0
        seg2 = dy * dy + dx * dx + 1e-9
        t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / seg2, 0.0, 1.0)
        d2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
        best = np.minimum(best, d2)
    return np.clip(width / 2.0 + 0.5 - np.sqrt(best), 0.0, 1.0)


def generate_image(rng: np.random.Generator, label: int, config: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
    """One (size, size, 1) uint8 radiograph-like image with (label 1) or
    without (label 0) a fracture."""
    return generate_image_and_boxes(rng, label, config)[0]


def _fracture_box(line_band: np.ndarray, intact_bone: np.ndarray) -> np.ndarray:
    """(1, 4) (ymin, xmin, ymax, xmax) in [0, 1] around the pixels where the
    fracture line cuts the bone; (0, 4) when it lies outside the image."""
    rows, cols = np.nonzero((line_band > 0.25) & (intact_bone > 0))
    if rows.size == 0:
        return np.zeros((0, 4), np.float32)
    h, w = line_band.shape
    return np.asarray([[rows.min() / h, cols.min() / w, (rows.max() + 1) / h, (cols.max() + 1) / w]], np.float32)


@dataclasses.dataclass(frozen=True)
class _Scene:
    """Where the limb lies in the image: what every stage of the drawing reads."""

    S: int  # image side
    scale: float  # S / 224: lengths given for a 224 image
    centre: np.ndarray
    angle: float
    u: np.ndarray  # the pixels' coordinates along the limb's axis ...
    v: np.ndarray  # ... and across it
    yy: np.ndarray
    xx: np.ndarray


def generate_image_and_boxes(rng: np.random.Generator, label: int,
                             config: SyntheticConfig = SyntheticConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`generate_image` and where its fracture is: boxes (k, 4),
    (ymin, xmin, ymax, xmax) in [0, 1]; (0, 4) for label 0. Drawing the box
    takes no random numbers, so the image is the one ``generate_image`` makes.
    (The stages draw their random numbers in a fixed order: reordering them
    changes every generated data set.)"""
    scene, attenuation = _limb(rng, config.size)
    radius = rng.uniform(0.055, 0.09) * scene.S
    joint = rng.random() < config.joint_rate
    bone_end = rng.uniform(0.0, 0.3) * scene.S if joint else 2.0 * scene.S
    bone, bone_att, boxes = _main_bone(rng, config, scene, label, radius, joint, bone_end)
    attenuation = attenuation + bone_att * BONE_ATTENUATION / scene.S
    if joint:
        attenuation = _add_joint(rng, scene, attenuation, bone, radius, bone_end)
    attenuation = _add_confounders(rng, config, scene, attenuation, radius, joint, bone_end)
    return _expose(rng, config, scene, attenuation), boxes


def _limb(rng: np.random.Generator, S: int) -> Tuple[_Scene, np.ndarray]:
    """The scene and the soft tissue: a broad limb-shaped shadow along the main bone's axis."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    angle = rng.uniform(-np.pi, np.pi)
    centre = np.array([rng.uniform(0.35, 0.65) * S, rng.uniform(0.35, 0.65) * S])
    u, v = _local_coords(yy, xx, centre, angle)
    limb_half_width = rng.uniform(0.22, 0.42) * S
    soft = np.sqrt(np.maximum(limb_half_width**2 - v * v, 0.0)) / S * rng.uniform(0.25, 0.55)
    soft += rng.uniform(0.0, 0.05)  # scatter/background
    return _Scene(S, S / 224.0, centre, angle, u, v, yy, xx), soft


def _main_bone(rng, config: SyntheticConfig, scene: _Scene, label: int, radius: float, joint: bool,
               bone_end: float) -> Tuple["_Bone", np.ndarray, np.ndarray]:
    """The main bone, running through the limb from beyond the border (its end
    may sit in view at u = bone_end, a joint): (bone, its attenuation, the
    fracture's boxes)."""
    start = -1.5 * scene.S
    bone = _Bone(rng, bone_end - start, radius, ends=(False, joint))
    bu = scene.u - start
    if label != 1:
        return bone, bone.attenuation(bu, scene.v), np.zeros((0, 4), np.float32)
    S, scale, v = scene.S, scene.scale, scene.v
    # Fracture: a jagged line across the shaft, possibly displaced/angulated.
    hi = bone_end - 0.12 * S if joint else 0.3 * S
    frac_u = rng.uniform(-0.3 * S, hi) - start
    tilt = np.tan(rng.uniform(-0.6, 0.6))
    jag = _smooth_noise_1d(rng, 256, knots=rng.integers(5, 12), amplitude=rng.uniform(0.8, 2.5) * scale)
    vi = np.clip(((v / (3 * radius) + 1) * 128).astype(np.int32), 0, 255)
    line_u = frac_u + v * tilt + jag[vi]
    gap = rng.uniform(*config.gap_range) * scale
    du, dv = _fragment_shift(rng, config, bu, v, bu > line_u, frac_u, gap, radius)
    # Bone is missing in a thin band around the fracture line.
    fracture_band = np.clip(gap / 2 + 0.5 - np.abs(bu - line_u), 0.0, 1.0)
    boxes = _fracture_box(fracture_band, bone.attenuation(bu, v))
    bone_att = bone.attenuation(bu - du, v - dv)
    bone_att *= 1.0 - rng.uniform(0.85, 1.0) * fracture_band
    return bone, bone_att, boxes


def _fragment_shift(rng, config: SyntheticConfig, bu, v, distal, frac_u: float, gap: float,
                    radius: float) -> Tuple[np.ndarray, np.ndarray]:
    """How far the distal fragment moved (along, across): displaced and/or angulated."""
    du = np.zeros_like(v)
    dv = np.zeros_like(v)
    if rng.random() < config.displaced_rate:
        dv = np.where(distal, rng.choice([-1, 1]) * rng.uniform(*config.shift_range) * radius, 0.0)
        du = np.where(distal, rng.uniform(-0.5, 1.5) * gap, 0.0)
    if rng.random() < config.angulated_rate:
        a = rng.uniform(0.05, 0.2) * rng.choice([-1, 1])
        ru, rv = bu - frac_u, v
        rot_u = ru * np.cos(a) - rv * np.sin(a) + frac_u
        rot_v = ru * np.sin(a) + rv * np.cos(a)
        du = du + np.where(distal, rot_u - bu, 0.0)
        dv = dv + np.where(distal, rot_v - v, 0.0)
    return du, dv


def _add_joint(rng, scene: _Scene, attenuation, bone: "_Bone", radius: float, bone_end: float) -> np.ndarray:
    """The articulating bone across a joint space, at an angle."""
    other = _Bone(rng, 2.0 * scene.S, radius * rng.uniform(0.8, 1.15), ends=(True, False))
    joint_space = rng.uniform(0.015, 0.035) * scene.S
    reach = bone.end_radius + joint_space + other.end_radius
    bend = rng.uniform(-0.6, 0.6)
    pivot = scene.centre + np.array([np.sin(scene.angle), np.cos(scene.angle)]) * (bone_end + reach)
    u2, v2 = _local_coords(scene.yy, scene.xx, pivot, scene.angle + bend)
    return attenuation + other.attenuation(u2, v2) * BONE_ATTENUATION / scene.S


def _add_confounders(rng, config: SyntheticConfig, scene: _Scene, attenuation, radius: float, joint: bool,
                     bone_end: float) -> np.ndarray:
    """What looks like a fracture line and is not, at the same rates in both classes."""
    S, scale, u, v = scene.S, scene.scale, scene.u, scene.v
    if rng.random() < config.overlap_rate:
        side = rng.choice([-1, 1]) * rng.uniform(0.6, 1.6) * radius
        cross = rng.uniform(-0.5, 0.5) if rng.random() < 0.5 else rng.uniform(-0.08, 0.08)
        origin = scene.centre + np.array([np.cos(scene.angle), -np.sin(scene.angle)]) * side
        u3, v3 = _local_coords(scene.yy, scene.xx, origin, scene.angle + cross)
        ends = (False, rng.random() < 0.4)
        thin = _Bone(rng, rng.uniform(0.6, 1.5) * S + S, radius * rng.uniform(0.45, 0.8), ends=ends)
        attenuation = attenuation + thin.attenuation(u3 + S, v3) * BONE_ATTENUATION / S
    if rng.random() < config.growth_plate_rate:
        # A smooth dark band across the shaft near its end (physis).
        plate_u = (bone_end - rng.uniform(0.06, 0.12) * S) if joint else rng.uniform(-0.3, 0.3) * S
        wave = 1.5 * scale * np.sin(v / (radius + 1e-6) * rng.uniform(1.0, 2.5))
        band = np.clip(rng.uniform(1.5, 3.0) * scale - np.abs(u - plate_u - wave), 0.0, 1.0)
        inside = np.abs(v) < radius * 1.3
        attenuation = attenuation - band * inside * rng.uniform(0.04, 0.09)
    if rng.random() < config.nutrient_canal_rate:
        # A short dark oblique line through one cortex only.
        cu = rng.uniform(-0.3, 0.3) * S
        sv = rng.choice([-1, 1]) * radius
        slope = rng.uniform(1.0, 3.0) * rng.choice([-1, 1])
        canal = np.clip(1.0 - np.abs((u - cu) - (v - sv) * slope) / (0.8 * scale), 0.0, 1.0)
        canal *= np.abs(v - sv) < 0.35 * radius
        attenuation = attenuation - canal * rng.uniform(0.05, 0.1)
    if rng.random() < config.vessel_rate:
        for _ in range(rng.integers(1, 4)):
            attenuation = attenuation + _vessel(rng, scene)
    return attenuation


def _vessel(rng, scene: _Scene) -> np.ndarray:
    """A faint meandering line (a vessel's calcified wall or its shadow), either sign."""
    S = scene.S
    y0, x0 = rng.uniform(0, S, 2)
    heading = rng.uniform(-np.pi, np.pi)
    steps = np.cumsum(rng.normal(0, 0.35, 6)) + heading
    pts = [(y0, x0)]
    for a in steps:
        pts.append((pts[-1][0] + np.sin(a) * S / 8, pts[-1][1] + np.cos(a) * S / 8))
    mask = _draw_polyline((S, S), pts, rng.uniform(0.8, 1.8) * scene.scale)
    return rng.choice([-1, 1]) * mask * rng.uniform(0.015, 0.04)


def _expose(rng, config: SyntheticConfig, scene: _Scene, attenuation) -> np.ndarray:
    """Projection, exposure and detector, then a lead side marker: uint8 (S, S, 1)."""
    S = scene.S
    mu = rng.uniform(1.0, 2.0)
    img = 1.0 - np.exp(-mu * np.maximum(attenuation, 0.0))
    img = gaussian_blur(img, rng.uniform(0.3, 1.1) * scene.scale)
    img = img / max(float(img.max()), 1e-6)
    img = np.clip(img * rng.uniform(0.75, 1.1) + rng.uniform(-0.05, 0.08), 0.0, 1.0) ** rng.uniform(0.7, 1.4)
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.035), img.shape)
    if rng.random() < config.marker_rate:
        # A bright block near a corner.
        h, w = int(rng.uniform(0.05, 0.09) * S), int(rng.uniform(0.05, 0.09) * S)
        y, x = int(rng.choice([0.04, 0.85]) * S), int(rng.choice([0.04, 0.85]) * S)
        img[y : y + h, x : x + w] = rng.uniform(0.85, 1.0)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one example: independent of every other example, so a
    split can be made in any order, in parallel, and reproduced in part."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_SEEDS[split], index]))


def example_label(seed: int, split: str, index: int) -> int:
    # Balanced classes: pairs of consecutive indices hold one of each, in random order.
    flip = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_SEEDS[split], index // 2, 7])).integers(2)
    return int((index + flip) % 2)


def generate_example(seed: int, split: str, index: int, config: SyntheticConfig = SyntheticConfig()):
    """(image (S, S, 1) uint8, label) of example ``index`` of ``split``."""
    image, label, _ = generate_example_with_boxes(seed, split, index, config)
    return image, label


def generate_example_with_boxes(seed: int, split: str, index: int, config: SyntheticConfig = SyntheticConfig()):
    """(image, label, fracture boxes (k, 4)) of example ``index`` of ``split``."""
    label = example_label(seed, split, index)
    image, boxes = generate_image_and_boxes(example_rng(seed, split, index), label, config)
    return image, label, boxes


def generate_arrays(
    n: int, split: str = "train", seed: int = 0, config: SyntheticConfig = SyntheticConfig()
) -> Tuple[np.ndarray, np.ndarray]:
    """An in-memory split: images (n, S, S, 1) uint8 and labels (n,) int32."""
    images = np.empty((n, config.size, config.size, 1), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        images[i], labels[i] = generate_example(seed, split, i, config)
    return images, labels
