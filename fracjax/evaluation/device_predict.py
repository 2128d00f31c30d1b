"""Logits for every example of a source, computed on the devices of a run
(the batch sharded over them; with several processes each reads its share
and every process gets every prediction back). Training's validation and its
end-of-run checks use it; metrics are made from the logits on the host."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import numpy as np

from fracjax import metrics as metrics_lib
from fracjax.data import pipeline


def predict_source(eval_fn, variables, source, batch_size: int, sharding) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, indices) for every example of ``source``, in global
    batches of ``batch_size`` placed with ``sharding`` (a batch-sharded
    NamedSharding); padded examples are dropped."""
    logits, labels, indices = [], [], []
    multihost = jax.process_count() > 1
    local_batch = batch_size // jax.process_count() if multihost else batch_size
    for batch in pipeline.eval_batches(source, local_batch, jax.process_index(), jax.process_count()):
        placed = jax.make_array_from_process_local_data(sharding, batch["image"])
        out = eval_fn(variables, {"image": placed})
        if multihost:
            # Every process gets every process's predictions and bookkeeping.
            from jax.experimental import multihost_utils

            z = np.asarray(multihost_utils.process_allgather(out, tiled=True))
            batch = {k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True))
                     for k in ("mask", "label", "index")}
        else:
            z = np.asarray(jax.device_get(out))
        m = batch["mask"]
        logits.append(z[m])
        labels.append(batch["label"][m])
        indices.append(batch["index"][m])
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(indices)


def evaluate_source(eval_fn, variables, source, batch_size: int, threshold: float, sharding) -> Dict[str, Any]:
    """The binary metrics (:func:`fracjax.metrics.metrics_from_logits`) of every example of ``source``."""
    logits, labels, _ = predict_source(eval_fn, variables, source, batch_size, sharding)
    return metrics_lib.metrics_from_logits(labels, logits, threshold)
