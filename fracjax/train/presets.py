"""Named recipes of options, and what a run's settings can learn from scratch.

``make_config(**options)`` builds a :class:`~fracjax.train.config.TrainConfig`
from the command line's option names; ``make_config("quick")`` starts from a
preset, the options given win. :func:`learning_problem` says why settings
will likely stay at chance from a random backbone (said when a run starts).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from fracjax.train.config import TrainConfig

# Named recipes: option values that go together; options given beside a preset win.
# quick: the embedded set's small config (3,000 training images at 128 px), fine-tuning only (phase 1 on a
# random backbone learns next to nothing), enough steps for a from-scratch model to start learning
# (benchmarks/NOTES.md, sessions 19 and 21, has the runs that chose these values).
PRESETS: Dict[str, Dict[str, Any]] = {
    "quick": dict(dataset="synthetic_fracture/quick", phase1_epochs=0, phase2_epochs=8, name="quick"),
}
# From scratch (no --pretrained), runs with fewer fine-tuning steps than this stayed near chance on
# the synthetic set (NOTES, session 19): a run that will take fewer says so before it starts.
MIN_STEPS_FROM_SCRATCH = 600
MIN_SIZE_FROM_SCRATCH = 96


def make_config(preset: Optional[str] = None, **options) -> TrainConfig:
    """A :class:`TrainConfig` from options named as on the command line:
    ``make_config(phase2_epochs=3, image_size=64)``; ``make_config("quick")``
    starts from a preset (:data:`PRESETS`), the options given win."""
    base = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; presets: {sorted(PRESETS)}")
        base = base.replace(**PRESETS[preset])
    return base.replace(**options)


def learning_problem(config: TrainConfig, steps_per_epoch: int, image_size: int) -> Optional[str]:
    """Why a run from scratch with these settings will likely stay at chance, or None."""
    if config.model.pretrained:
        return None
    steps = config.optim.phase2_epochs * steps_per_epoch
    if config.run.max_steps is not None:
        steps = min(steps, max(0, config.run.max_steps - config.optim.phase1_epochs * steps_per_epoch))
    if image_size < MIN_SIZE_FROM_SCRATCH:
        return (f"{image_size} px is too small to learn from scratch: runs at 64 px stayed at chance, and at 96 px "
                "a model learned far slower than at 128 (test AUROC 0.74 against 0.85 after the same ~700 steps); "
                "use 128 px, or --pretrained")
    if steps < MIN_STEPS_FROM_SCRATCH:
        return (f"{steps} fine-tuning steps from scratch (no --pretrained) are too few to learn: a random backbone "
                "starts to find fractures after some 300-500 steps (phase-2 epochs x training images / batch "
                f"size), and runs that ended before {MIN_STEPS_FROM_SCRATCH} stayed at or near chance. Give more "
                "--phase2-epochs or images, or --pretrained; --quick learns in under 4 minutes")
    return None
