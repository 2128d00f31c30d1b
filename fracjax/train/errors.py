"""Why a run stopped or was refused, as the callers of :func:`fracjax.train.fit` catch it."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or model; the run stopped there, nothing of it saved."""


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed (or must not be overwritten)."""
