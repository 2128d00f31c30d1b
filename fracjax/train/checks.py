"""Checks of option values: each takes a value and says what is wrong with it
(None: fine). The options of training (:mod:`fracjax.train.config`) and of
the comparison (:mod:`fracjax.comparison`) declare theirs from these."""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any, Callable, Optional

from fracjax.metrics import is_number

Check = Callable[[Any], Optional[str]]  # a value -> what is wrong with it, or None


def at_least(low) -> Check:
    return lambda v: None if low <= v < math.inf else f"must be >= {low} and finite, got {v}"


def between(low, high) -> Check:
    """A size-like option: at most what a machine could hold or a person would mean."""
    return lambda v: None if low <= v <= high else f"must be in [{low:,}, {high:,}], got {v}"


# Upper bounds of size-like options: far past any real use, well short of a 37 GiB allocation.
MAX_IMAGE_SIZE = 1024
MAX_BATCH = 4096
MAX_EPOCHS = 10_000
MAX_BOOTSTRAP = 100_000


def positive(v) -> Optional[str]:
    return None if 0 < v < math.inf else f"must be > 0 and finite, got {v}"


def open_fraction(v) -> Optional[str]:
    return None if 0.0 < v < 1.0 else f"must be in (0, 1), got {v}"


SEED_RANGE = (0, 2**32 - 1)  # what jax.random.key and numpy's generators take


def seed_range(v) -> Optional[str]:
    low, high = SEED_RANGE
    return None if low <= v <= high else f"must be an integer in [{low}, {high}], got {v}"


def fraction(v) -> Optional[str]:
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def one_of(choices) -> Check:
    return lambda v: None if v in choices else f"must be one of {tuple(choices)}, got {v!r}"


def existing_file(v) -> Optional[str]:
    return None if os.path.isfile(v) else f"no such file: {v}"


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past any float (10**400)
        return False


def type_problem(annotation: str, value) -> Optional[str]:
    """What is wrong with ``value``'s type for a field annotated ``annotation``
    (a string: annotations are postponed); None: fine."""
    kinds = set(re.findall(r"\b(int|float|bool|str)\b", annotation))
    if any(kind in annotation for kind in ("Tuple", "Sequence", "Dict")) or kinds == {"str", "int"}:
        return None  # the field's own check decides
    if kinds == {"float"} and not is_number(value):
        return f"must be a number, got {value!r}"
    if kinds == {"float"} and not _finite(value):
        return f"must be finite, got {value if isinstance(value, float) else 'a number too large for a float'}"
    if kinds == {"int"} and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
        return f"must be an integer, got {value!r}"
    if kinds == {"bool"} and not isinstance(value, bool):
        return f"must be True or False, got {value!r}"
    if kinds == {"str"} and not isinstance(value, str):
        return f"must be text, got {value!r}"
    return None
