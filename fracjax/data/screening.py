"""Input checks before the model: is this plausibly a radiograph at all?

A fracture classifier scores whatever it is given. These rules catch, cheaply and with a reason
a person can read, the inputs that are certainly not what it was trained on:

* **DICOM of another modality.** The Modality tag (0008,0060) must be projection radiography:
  CR, DX, RF, XA, MG, PX or IO (or absent, as in many exported files). CT, MR, US, NM, PT, OT and
  the rest are refused: a CT or MR slice is a cross-section, not a projection X-ray.
* **A colour picture.** X-rays are grey, even when stored as RGB (then the channels are equal, or
  differ by a few levels of JPEG noise). An image is a colour picture when more than
  ``COLOUR_SHARE`` of its pixels have channels more than ``COLOUR_SPREAD`` levels (of 255) apart:
  a photograph, a logo, a screenshot; a grey X-ray with a small coloured marker passes.
* **A (nearly) uniform image.** When the 1st and 99th percentiles of the model's input lie fewer
  than ``UNIFORM_LEVELS`` levels apart the image holds no structure to classify (a blank frame, a
  constant array, a failed export).

Decoding (:mod:`fracjax.data.io`) fills an :class:`Observations` as it reads (the modality, the
colour share, counted block by block before colour becomes grey), so the checks cost no second
decode. What these rules cannot see (noise, a document, an unusual body part) is the learned
detector's job.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RF", "XA", "MG", "PX", "IO"})
COLOUR_SPREAD = 24  # levels of 255 between a pixel's largest and smallest channel
COLOUR_SHARE = 0.05  # share of pixels past COLOUR_SPREAD that makes an image a colour picture
UNIFORM_LEVELS = 8  # 99th minus 1st percentile of the model input, in levels of 255, below which it is uniform


@dataclasses.dataclass
class Observations:
    """What decoding saw of one image, for :func:`input_check`."""

    modality: Optional[str] = None  # DICOM Modality, upper case; None: not DICOM or no tag
    colour_pixels: int = 0  # pixels whose channels differ by more than COLOUR_SPREAD
    pixels: int = 0  # pixels of colour data counted (0: the image was stored grey)

    def count_colour(self, rgb: np.ndarray) -> None:
        """Count one block of (..., 3) colour pixels on the 0..255 scale."""
        rgb = np.asarray(rgb)
        spread = rgb.max(axis=-1).astype(np.float32) - rgb.min(axis=-1)
        self.colour_pixels += int(np.count_nonzero(spread > COLOUR_SPREAD))
        self.pixels += int(spread.size)

    @property
    def colour_share(self) -> float:
        return self.colour_pixels / self.pixels if self.pixels else 0.0


def modality_reason(modality: Optional[str]) -> Optional[str]:
    """Why a DICOM Modality is not a radiograph's, or None."""
    if not modality or modality.upper() in RADIOGRAPH_MODALITIES:
        return None
    return (f"DICOM modality {modality.upper()} is not projection radiography "
            f"(this model reads {', '.join(sorted(RADIOGRAPH_MODALITIES))})")


def colour_reason(share: float) -> Optional[str]:
    """Why an image with this share of colourful pixels is a colour picture, or None."""
    if share <= COLOUR_SHARE:
        return None
    return (f"a colour picture, not a grey X-ray: {share:.0%} of its pixels have colour channels more than "
            f"{COLOUR_SPREAD} levels apart")


def uniform_reason(pixels: np.ndarray) -> Optional[str]:
    """Why a model input (S, S[, 1]) uint8 is (nearly) uniform, or None."""
    low, high = np.percentile(np.asarray(pixels), [1, 99])
    if high - low >= UNIFORM_LEVELS:
        return None
    return (f"a (nearly) uniform image: 98% of its pixels lie within {high - low:.0f} grey levels "
            f"(fewer than {UNIFORM_LEVELS})")


def input_check(seen: Optional[Observations], pixels: np.ndarray) -> Optional[str]:
    """The first reason the input checks give for one image (None: it passes them).
    ``seen``: what decoding observed (None for nothing); ``pixels``: the model input."""
    seen = seen or Observations()
    return modality_reason(seen.modality) or colour_reason(seen.colour_share) or uniform_reason(pixels)


def input_check_rules() -> dict:
    """The rules above as data, for a model card: a deployment without fracjax can apply them."""
    return {
        "dicom_modalities_accepted": sorted(RADIOGRAPH_MODALITIES) + ["(absent)"],
        "colour_picture": {"channel_spread_levels_over": COLOUR_SPREAD, "share_of_pixels_over": COLOUR_SHARE},
        "uniform_image": {"model_input_p99_minus_p1_under": UNIFORM_LEVELS},
        "flagged": "no label: outside what this model was trained on (the probability is still given)",
    }
