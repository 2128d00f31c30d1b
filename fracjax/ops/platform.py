"""Which implementation runs where.

Every op here has a CPU implementation (hand-written for XLA:CPU, with a
custom VJP) and a portable one (lax's own op, which GPU and TPU compile
well). ``impl="auto"`` defers the choice to lowering through
``lax.platform_dependent``: a function traced on a CPU host and then lowered
or exported for a GPU gets the portable code, and a function lowered for one
platform carries no trace of the other (the conditional is resolved then).
"""

from __future__ import annotations

import os
from typing import Callable, Tuple

from jax import lax


def check_impl(impl: str, choices: Tuple[str, ...], what: str) -> str:
    """``impl`` if it is one of ``choices``; a ValueError naming ``what`` otherwise."""
    if impl not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {impl!r}")
    return impl


def by_platform(impl: str, cpu_impl: str, cpu: Callable, portable: Callable, *args):
    """``cpu(*args)`` when ``impl`` is ``cpu_impl``, ``portable(*args)`` when it
    is "lax", and for "auto" whichever suits the platform lowered for."""
    if impl == "auto":
        return lax.platform_dependent(*args, cpu=cpu, default=portable)
    return cpu(*args) if impl == cpu_impl else portable(*args)


def env_impl(variable: str, choices: Tuple[str, ...]) -> str:
    """The implementation an environment variable asks for ("auto" when unset),
    checked: the only place the environment is read."""
    return check_impl(os.environ.get(variable, "auto"), choices, f"environment variable {variable}")
