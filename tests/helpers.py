"""Helpers several test modules share."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import fracjax
from fracjax.inference import Classifier


def random_variables(model, image_size: int, seed: int):
    """Random variables of ``model`` drawn on the host: kernels N(0, 2/fan_in) (He), biases 0,
    BatchNorm at scale 1, shift 0, mean 0, variance 1. The shapes come from tracing
    ``init``; compiling it (its threefry draws) costs ~20 s on 2 cores, this ~1 s."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 1))))

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1])) or 1
            return jnp.asarray(rng.normal(0.0, (2.0 / fan_in) ** 0.5, leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_classifier(seed: int, batch_size: int, image_size: int = 32) -> Classifier:
    """A randomly initialised MobileNetV3-Small with a linear head, as a Classifier."""
    spec = {"model": "mobilenet_v3_small", "head": "linear", "image_size": image_size, "threshold": 0.5,
            "variables_layout": fracjax.models.migrate.VARIABLES_LAYOUT}
    model = fracjax.models.create("mobilenet_v3_small", head="linear")
    variables = random_variables(model, image_size, seed)
    classifier = Classifier(spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]},
                            batch_size=batch_size)
    # Random features give logits of ~1e-3 (probabilities all ~0.5, where any two models agree to 1e-5):
    # the output layer is scaled so that logits spread with a standard deviation of ~2.
    probe = np.random.default_rng(seed).integers(0, 256, (batch_size, image_size, image_size, 1), np.uint8)
    spread = 2.0 / max(float(np.std(classifier.logits(probe))), 1e-12)
    classifier.variables = jax.tree_util.tree_map_with_path(
        lambda path, x: x * spread if _is_output_kernel(path, x) else x, classifier.variables)
    return classifier


def _is_output_kernel(path, leaf) -> bool:
    return str(getattr(path[-1], "key", "")) == "kernel" and "head" in str(path) and leaf.shape[-1] == 1


CALIBRATION = {"temperature": 1.7, "operating_points": {"youden": 0.42, "sensitivity_0.95": 0.2},
               "operating_point_metrics": {"youden": {"sensitivity": 0.8, "specificity": 0.7}}}


def saved_run(run_dir, classifier: Classifier, calibration=CALIBRATION) -> str:
    """A run folder holding ``classifier`` as its best checkpoint (step 1), with ``calibration``."""
    import os

    from fracjax.checkpoint import RunCheckpoints, write_calibration

    checkpoints = RunCheckpoints(str(run_dir))
    checkpoints.save_best(1, classifier.variables, {"model": classifier.spec, "step": 1})
    checkpoints.close()
    if calibration is not None:
        write_calibration(os.path.join(str(run_dir), "checkpoints", "best", "1"), calibration)
    return str(run_dir)


def init_once(model, x, seed: int = 0, **kwargs):
    """``model.init`` jitted as the library's inits are (any input ``x``, any keyword)."""
    from fracjax.models.registry import INIT_COMPILER_OPTIONS

    return jax.jit(lambda key: model.init(key, x, **kwargs), compiler_options=INIT_COMPILER_OPTIONS)(
        jax.random.key(seed)
    )


def tensorboard_events(run_dir):
    """What TensorBoard shows of a run folder: ``{tag: {step: value}}`` for
    scalars, ``{tag: {step: (height, width)}}`` for images. Event files are
    read in the order written; a ``SessionLog.START`` at step s (a resumed
    run's purge_step) drops the earlier events at steps >= s, as TensorBoard does."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    shown = {}
    for path in sorted(glob.glob(os.path.join(str(run_dir), "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):  # TFRecord: length, its CRC, the record, its CRC
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                shown = {tag: {s: v for s, v in steps.items() if s < event.step} for tag, steps in shown.items()}
            for value in event.summary.value:
                seen = (value.image.height, value.image.width) if value.HasField("image") else value.simple_value
                shown.setdefault(value.tag, {})[event.step] = seen
    return shown
