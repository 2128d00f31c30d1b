"""``fit(config)``: two-phase transfer learning from data preparation to the
test report.

Phase 1 trains the head with the backbone frozen (masked optimizer, backbone
BatchNorm on running statistics); phase 2 fine-tunes the backbone (all of it
or its top groups) with its own learning rate and a fresh optimizer state.
Every epoch ends with a validation pass over every example, early stopping
on validation AUROC, and checkpoints (latest for ``resume``, best by AUROC).
The run folder gets ``config.json``, ``metrics.jsonl``, ``report.json`` and
``curves.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import fracjax
from fracjax.data import pipeline
from fracjax.data.augment import AugmentConfig
from fracjax.train import checkpoint as ckpt
from fracjax.train import metrics as metrics_lib
from fracjax.train import optim
from fracjax.train.config import TrainConfig
from fracjax.train.steps import StepConfig, TrainState, eval_step, train_step

LABEL_NAMES = ["not_fractured", "fractured"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stopped there."""


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed (or must not be overwritten)."""


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


class SubsetSource:
    """The first ``n`` examples of a source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]


def prepare_dataset(config: TrainConfig):
    """Prepare the TFDS set if it is missing; return the builder."""
    import tensorflow_datasets as tfds

    import fracjax.data.builders  # noqa: F401  (registers the builders)

    name = config.dataset
    base = name.split("/")[0]
    try:
        builder = tfds.builder(name, data_dir=config.data_dir)
    except Exception as err:
        raise ValueError(f"--dataset: cannot load {name!r} ({err})") from None
    if not builder.is_prepared():
        download_config = None
        if base == "fracture_xray":
            if not config.manual_dir:
                raise FileNotFoundError(
                    f"{name} is not prepared in {builder.data_dir}; pass --manual-dir with the folder "
                    "you unzipped the Kaggle download into"
                )
            download_config = tfds.download.DownloadConfig(manual_dir=config.manual_dir)
        start = time.perf_counter()
        # TFDS's own bars (one per split, plus shuffling) say less than the
        # builder's line and flood a notebook; our bars are for training.
        tfds.display_progress_bar(False)
        builder.download_and_prepare(download_config=download_config)  # says what it prepares, from where
        _log(f"prepared in {time.perf_counter() - start:.0f} s")
    return builder


def load_splits(config: TrainConfig, builder) -> Dict[str, Any]:
    sources = builder.as_data_source()
    missing = [s for s in ("train", "validation", "test") if s not in sources]
    if missing:
        raise ValueError(f"--dataset {config.dataset}: no split(s) {missing}")
    splits = {s: sources[s] for s in ("train", "validation", "test")}
    if config.train_examples:
        splits["train"] = SubsetSource(splits["train"], config.train_examples)
    stored = int(builder.info.features["image"].shape[0])
    size = config.image_size or stored
    for split, source in list(splits.items()):
        if config.in_memory or size != stored:
            source = pipeline.load_arrays(source)
            if size != stored:
                source = _resized(source, size)
        splits[split] = source
    return splits


def _resized(source: pipeline.ArraySource, size: int) -> pipeline.ArraySource:
    from fracjax.data.io import model_input

    images = np.stack([model_input(im, size) for im in source.images])
    return pipeline.ArraySource(images, source.labels, source.filenames)


# --------------------------------------------------------------------------
# Model and parallelism.
# --------------------------------------------------------------------------


def build_model(config: TrainConfig, bn_axis_name: Optional[str] = None):
    options: Dict[str, Any] = {}
    if config.dtype == "bfloat16":
        options["dtype"] = jnp.bfloat16
    if bn_axis_name:
        options["bn_axis_name"] = bn_axis_name
    if config.head_blocks is not None:
        options["head_blocks"] = config.head_blocks
    if config.head_dropout is not None:
        options["head_dropout"] = config.head_dropout
    if config.backbone_momentum is not None:
        options["bn_momentum"] = config.backbone_momentum
    return fracjax.models.create(config.model, head=config.head, num_classes=1, **options)


def model_spec(config: TrainConfig, image_size: int) -> Dict[str, Any]:
    """What inference needs to rebuild the model (saved with checkpoints)."""
    return {
        "model": config.model,
        "head": config.head,
        "num_classes": 1,
        "head_blocks": config.head_blocks,
        "head_dropout": config.head_dropout,
        "image_size": image_size,
        "input_contract": fracjax.models.input_contract(config.model).to_dict(),
        "threshold": config.threshold,
        "labels": LABEL_NAMES,
        "fracjax_version": fracjax.__version__,
    }


def replicate_for_pmap(tree, devices):
    """One copy per device along a new leading axis, laid out as pmap wants
    (``jax.device_put_replicated`` is gone from JAX)."""
    mesh = Mesh(np.array(devices), ("replica",))
    sharding = NamedSharding(mesh, PartitionSpec("replica"))
    n = len(devices)
    return jax.tree_util.tree_map(lambda x: jax.device_put(jnp.stack([x] * n), sharding), tree)


class Parallel:
    """Places batches and runs steps: jit over a 1-D ``data`` mesh (default)
    or pmap over the same devices."""

    AXIS = "batch"

    def __init__(self, mode: str):
        self.mode = mode
        self.devices = jax.devices()
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.sharded = NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def count(self) -> int:
        return len(self.devices)

    def put_batch(self, batch: Dict[str, np.ndarray]):
        if self.mode == "pmap":
            n = jax.local_device_count()
            return jax.tree_util.tree_map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
        return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()}

    def put_state(self, state: TrainState):
        if self.mode == "pmap":
            return replicate_for_pmap(state, jax.local_devices())
        return jax.device_put(state, self.replicated)

    def get_state(self, state: TrainState) -> TrainState:
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: x[0], state)
        return state

    def compile_step(self, step_fn):
        if self.mode == "pmap":
            return jax.pmap(functools.partial(step_fn, axis_name=self.AXIS), axis_name=self.AXIS, donate_argnums=0)
        return jax.jit(
            step_fn, in_shardings=(self.replicated, self.sharded), out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )

    def step_metrics(self, m):
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: x[0], m)
        return m


# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


def predict_source(eval_fn, variables, source, batch_size: int, par: Parallel) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, indices) for every example of ``source``."""
    logits, labels, indices = [], [], []
    multihost = jax.process_count() > 1
    local_batch = batch_size // jax.process_count() if multihost else batch_size
    for batch in pipeline.eval_batches(source, local_batch, jax.process_index(), jax.process_count()):
        placed = jax.make_array_from_process_local_data(par.sharded, batch["image"])
        out = eval_fn(variables, {"image": placed})
        if multihost:
            # Every process gets every process's predictions and bookkeeping.
            from jax.experimental import multihost_utils

            z = np.asarray(multihost_utils.process_allgather(out, tiled=True))
            batch = {k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True)) for k in ("mask", "label", "index")}
        else:
            z = np.asarray(jax.device_get(out))
        m = batch["mask"]
        logits.append(z[m])
        labels.append(batch["label"][m])
        indices.append(batch["index"][m])
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(indices)


def evaluate_split(eval_fn, variables, source, config: TrainConfig, par: Parallel) -> Dict[str, Any]:
    logits, labels, _ = predict_source(eval_fn, variables, source, _eval_batch(config, par), par)
    return metrics_lib.metrics_from_logits(labels, logits, config.threshold)


def _eval_batch(config: TrainConfig, par: Parallel) -> int:
    n = par.count
    return max(n, (config.eval_batch_size // n) * n)


# --------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    number: int
    epochs: int
    lr: float
    first_step: int  # global step at which this phase starts


def _phases(config: TrainConfig, steps_per_epoch: int) -> List[Phase]:
    phases = []
    step = 0
    for number, epochs, lr in ((1, config.phase1_epochs, config.lr), (2, config.phase2_epochs, config.phase2_lr)):
        if epochs:
            phases.append(Phase(number, epochs, lr, step))
            step += epochs * steps_per_epoch
    return phases


def _optimizer(config: TrainConfig, params, phase: Phase, steps_per_epoch: int):
    total = phase.epochs * steps_per_epoch
    schedule = optim.learning_rate_schedule(
        "cosine" if config.schedule == "cosine" else "plateau",
        phase.lr,
        total,
        warmup_steps=int(config.warmup_epochs * steps_per_epoch),
    )
    tx = optim.make_optimizer(
        params, phase.number, schedule, config.weight_decay, config.unfreeze, config.grad_clip
    )
    labels = optim.trainable_labels(params, phase.number, config.unfreeze)
    return tx, labels


def _check_resumable(meta: Dict[str, Any], config: TrainConfig) -> None:
    saved = meta.get("config", {})
    for field in ("model", "head", "dataset", "batch_size", "seed", "train_examples", "phase1_epochs", "phase2_epochs", "unfreeze"):
        if str(saved.get(field)) != str(getattr(config, field)):
            raise ResumeError(
                f"cannot resume {config.run_dir}: it was run with {field}={saved.get(field)!r}, "
                f"now {getattr(config, field)!r}"
            )


def _plot_curves(history: List[Dict[str, Any]], path: str) -> None:
    from fracjax.evaluation import figures

    figures.training_curves(history, path)


_jsonable = metrics_lib.jsonable


def fit(config: TrainConfig) -> Dict[str, Any]:
    """Train as ``config`` says; return the report (also in report.json)."""
    config.validate()
    start_time = time.perf_counter()
    run_dir = config.run_dir
    checkpoints_dir = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(checkpoints_dir) and os.listdir(checkpoints_dir) and not config.resume:
        raise ResumeError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or another --name / --out"
        )
    par = Parallel(config.parallel)
    if config.batch_size % par.count:
        raise ValueError(f"--batch-size {config.batch_size} is not divisible by {par.count} devices")

    # The model first: a bad weights file must stop the run before any data work.
    model = build_model(config, Parallel.AXIS if config.parallel == "pmap" else None)
    init_model = build_model(config)  # pmap's BN axis needs no axis at init
    backbone = None
    if config.pretrained:
        check_size = config.image_size or fracjax.models.input_contract(config.model).default_size
        weights_file = fracjax.models.pretrained.resolve(config.model, config.pretrained)
        backbone = fracjax.models.load_keras_weights(config.model, weights_file, image_size=check_size)
    builder = prepare_dataset(config)
    stored_size = int(builder.info.features["image"].shape[0])
    image_size = config.image_size or stored_size
    dummy = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
    variables = jax.jit(lambda k: init_model.init(k, dummy, train=False))(jax.random.key(config.seed))
    pretrained_note = None
    if backbone is not None:
        variables = fracjax.models.with_backbone_variables(variables, backbone)
        pretrained_note = os.path.abspath(weights_file)
        _log(f"loaded backbone weights from {config.pretrained}")

    splits = load_splits(config, builder)
    train_source = splits["train"]
    order = pipeline.TrainOrder(
        len(train_source), config.batch_size, config.seed, jax.process_index(), jax.process_count()
    )
    spe = order.steps_per_epoch
    phases = _phases(config, spe)
    total_steps = sum(p.epochs for p in phases) * spe
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    os.makedirs(run_dir, exist_ok=True)
    spec = model_spec(config, image_size)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(_jsonable({"train": config.to_dict(), "model": spec}), f, indent=1, default=str)

    augment = (
        AugmentConfig(flip=True, rotation=config.rotation, zoom=config.zoom, contrast=config.contrast,
                      brightness=config.brightness)
        if config.augment else None
    )
    pos_w, neg_w = (config.class_weights[1], config.class_weights[0]) if config.class_weights else (1.0, 1.0)
    compute_dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    eval_fn = jax.jit(
        functools.partial(eval_step, apply_fn=init_model.apply, compute_dtype=compute_dtype),
        in_shardings=(par.replicated, par.sharded), out_shardings=par.sharded,
    )
    checkpoints = ckpt.RunCheckpoints(run_dir)
    # Host copy: every phase's fresh state gets its own device key (the step donates the state).
    key_data = np.asarray(jax.random.key_data(jax.random.key(config.seed + 1)))

    # Bookkeeping carried across epochs (and checkpoints).
    book: Dict[str, Any] = {"best_auroc": None, "best_step": None, "bad_epochs": 0, "history": [], "plateau": None}
    global_step = 0
    state: Optional[TrainState] = None
    resume_meta = None
    if config.resume:
        step = checkpoints.latest_step()
        if step is None:
            _log(f"--resume: no checkpoint in {run_dir}; starting from the beginning")
        else:
            resume_meta = checkpoints.latest_meta(step)
            _check_resumable(resume_meta, config)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if resume_meta is None and os.path.exists(metrics_path):
        os.remove(metrics_path)

    plateau = optax.contrib.reduce_on_plateau(factor=config.plateau_factor, patience=config.plateau_patience)
    stopped_early = False
    train_seconds = 0.0
    steady_seconds, steady_images = 0.0, 0  # without the steps that compiled
    for phase in phases:
        phase_end = phase.first_step + phase.epochs * spe
        if resume_meta is not None and resume_meta["phase"] > phase.number:
            continue
        tx, labels = _optimizer(config, variables["params"], phase, spe)
        if resume_meta is not None:
            # Restore into this phase's optimizer tree.
            params_shape = jax.eval_shape(lambda: variables)
            train_target = {
                "opt_state": jax.eval_shape(tx.init, variables["params"]),
                "step": jax.ShapeDtypeStruct((), jnp.int32),
                "key": jax.ShapeDtypeStruct(key_data.shape, key_data.dtype),
                "lr_scale": jax.ShapeDtypeStruct((), jnp.float32),
            }
            model_vars, train_vars, meta = checkpoints.restore_latest(
                checkpoints.latest_step(), {"params": params_shape["params"], "batch_stats": params_shape["batch_stats"]},
                train_target,
            )
            variables = {"params": model_vars["params"], "batch_stats": model_vars["batch_stats"]}
            state = TrainState(
                step=jnp.asarray(train_vars["step"], jnp.int32),
                params=variables["params"],
                batch_stats=variables["batch_stats"],
                opt_state=train_vars["opt_state"],
                key=jax.random.wrap_key_data(train_vars["key"]),
                lr_scale=jnp.asarray(train_vars["lr_scale"], jnp.float32),
            )
            book = meta["book"]
            global_step = int(meta["global_step"])
            # The checkpoint's history is the truth: a run killed between
            # writing an epoch's line and saving its checkpoint redoes that epoch.
            _write_metrics(metrics_path, book["history"])
            _log(f"resumed from step {global_step}")
            resume_meta = None
            if book.get("budget_spent"):  # the run had used its training-time budget
                break
            # A run that had already stopped early in this phase stays stopped.
            if meta.get("phase_done"):
                continue
        else:
            state = TrainState.create(
                variables["params"], variables["batch_stats"], tx, jax.random.wrap_key_data(jnp.asarray(key_data)),
                step=global_step,
            )
            book["bad_epochs"] = 0
            book["plateau"] = None
        plateau_state = plateau.init(None)
        if book.get("plateau"):
            plateau_state = plateau_state._replace(**{k: jnp.asarray(v, getattr(plateau_state, k).dtype) for k, v in book["plateau"].items()})

        step_config = StepConfig(
            backbone_train=(phase.number == 2 and config.backbone_bn_mode),
            label_smoothing=config.label_smoothing,
            pos_weight=pos_w,
            neg_weight=neg_w,
            augment=augment,
            compute_dtype=compute_dtype,
        )
        step_fn = par.compile_step(
            functools.partial(train_step, apply_fn=model.apply, tx=tx, labels=labels, config=step_config)
        )
        state = par.put_state(state)
        trainable = optim.count_trainable(variables["params"], labels)
        bn_note = f", backbone BatchNorm {'train' if step_config.backbone_train else 'inference'} mode"
        _log(f"phase {phase.number}: {trainable:,} trainable parameters{bn_note}, lr {phase.lr:g}, "
             f"{phase.epochs} epoch(s) of {spe} steps, batch {config.batch_size}, {par.mode} on {par.count} device(s)")

        compiled = False
        while global_step < min(phase_end, total_steps):
            epoch = global_step // spe
            epoch_end = min((epoch + 1) * spe, phase_end, total_steps)
            losses, correct, count = [], 0, 0
            epoch_start = time.perf_counter()
            clock = _Throughput(epoch_start)
            batches = pipeline.train_batches(train_source, order, start_step=global_step, num_steps=epoch_end - global_step)
            bar = _progress(config, epoch_end - global_step, f"phase {phase.number} epoch {epoch + 1}")
            for batch in batches:
                if not compiled:
                    _log(f"compiling the phase {phase.number} train step (XLA; once per phase) ...")
                state, m = step_fn(state, par.put_batch(batch))
                m = jax.device_get(par.step_metrics(m))
                if not compiled:
                    compiled = True
                    _log(f"compiled and ran the first step in {time.perf_counter() - epoch_start:.1f} s")
                    clock = _Throughput(time.perf_counter(), skipped=int(m["count"]))
                loss = float(m["loss"])
                if not math.isfinite(loss):
                    last = checkpoints.latest_step()
                    raise NonFiniteLossError(
                        f"non-finite training loss ({loss}) at step {global_step + 1} (phase {phase.number}, "
                        f"epoch {epoch + 1}); the last good checkpoint is step {last} in {checkpoints.directory}. "
                        "Lower --lr, keep --grad-clip, or check the data."
                    )
                global_step += 1
                losses.append(loss)
                correct += int(m["correct"])
                count += int(m["count"])
                if bar is not None:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", img_s=f"{clock.rate(count):.1f}")
                    bar.update(1)
                if config.checkpoint_every and global_step % config.checkpoint_every == 0 and global_step < epoch_end:
                    _save_latest(checkpoints, global_step, par.get_state(state), book, phase, config, spec, plateau_state, False)
            if bar is not None:
                bar.close()
            seconds = time.perf_counter() - epoch_start
            images_per_s = clock.rate(count)
            train_seconds += seconds
            steady_seconds += clock.seconds()
            steady_images += count - clock.skipped
            host_state = par.get_state(state)
            variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
            val = evaluate_split(eval_fn, variables, splits["validation"], config, par)
            if config.schedule == "plateau":
                _, plateau_state = plateau.update({}, plateau_state, value=jnp.asarray(val["loss"]))
                # A copy: the step donates the state, and a shared buffer would
                # delete the plateau state's own scale with it.
                host_state = host_state.replace(lr_scale=jnp.array(plateau_state.scale, jnp.float32, copy=True))
                state = par.put_state(host_state)
            record = {
                "epoch": epoch + 1,
                "phase": phase.number,
                "step": global_step,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "train_accuracy": correct / max(count, 1),
                "validation": val,
                "lr_scale": float(host_state.lr_scale),
                "seconds": round(seconds, 2),
                "images_per_s": round(images_per_s, 2),  # without the compile
            }
            book["history"].append(_jsonable(record))
            with open(metrics_path, "a") as f:
                f.write(json.dumps(_jsonable(record)) + "\n")
            improved = metrics_lib.is_better(val["auroc"], book["best_auroc"])
            if improved:
                book["best_auroc"], book["best_step"], book["bad_epochs"] = val["auroc"], global_step, 0
                checkpoints.save_best(global_step, variables, _jsonable({"model": spec, "validation": val, "step": global_step}))
            else:
                book["bad_epochs"] += 1
            _log(
                f"epoch {epoch + 1} (phase {phase.number}): train loss {record['train_loss']:.4f} acc "
                f"{record['train_accuracy']:.3f} | val loss {val['loss']:.4f} acc {val['accuracy']:.3f} "
                f"auroc {val['auroc']:.4f}{' *' if improved else ''} | {record['images_per_s']:.1f} img/s"
            )
            book["train_seconds"] = book.get("train_seconds", 0.0) + clock.seconds()
            book["budget_spent"] = _budget_spent(config, book["train_seconds"], clock.seconds())
            phase_done = book["bad_epochs"] >= config.early_stopping_patience and global_step < phase_end
            _save_latest(checkpoints, global_step, host_state, book, phase, config, spec, plateau_state,
                         phase_done or book["budget_spent"])
            if book["budget_spent"]:
                _log(f"training budget: {book['train_seconds'] / 60:.1f} of {config.train_minutes:g} min spent; "
                     "one more epoch would pass it, so training ends here")
                break
            if phase_done:
                _log(f"early stopping: no better validation AUROC for {book['bad_epochs']} epoch(s)")
                stopped_early = True
                break
        variables = {"params": par.get_state(state).params, "batch_stats": par.get_state(state).batch_stats}
        if global_step >= total_steps or book.get("budget_spent"):
            break

    checkpoints.close()
    if book["history"]:
        _plot_curves(book["history"], os.path.join(run_dir, "curves.png"))
    best = next((h for h in book["history"] if h["step"] == book["best_step"]), {})
    report = _jsonable(
        {
            "validation": best.get("validation"),
            "best_step": book["best_step"],
            "stopped_early": stopped_early,
            "budget": {"train_minutes": config.train_minutes, "spent": bool(book.get("budget_spent"))}
            if config.train_minutes else None,
            "model": spec,
            "data": {
                "dataset": config.dataset,
                "examples": {s: len(src) for s, src in splits.items()},
                "skipped": builder.info.metadata.get("skipped", []) if builder.info.metadata else [],
            },
            "pretrained": pretrained_note,
            "timing": {
                "train_seconds": round(train_seconds, 1),
                "train_steps": global_step,
                "train_images_per_s": round(steady_images / max(steady_seconds, 1e-9), 2),
            },
            "devices": f"{par.count} x {jax.devices()[0].platform}",
        }
    )
    if jax.process_index() == 0:
        evaluation_start = time.perf_counter()
        report.update(_final_evaluation(run_dir, splits, config, book["history"]))
        report["timing"]["evaluation_seconds"] = round(time.perf_counter() - evaluation_start, 1)
        report["timing"]["wall_seconds"] = round(time.perf_counter() - start_time, 1)
        with open(os.path.join(run_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        test = report["test"]
        _log(
            f"test (best checkpoint, step {report['best_step']}): accuracy {test['accuracy']:.3f}, AUROC "
            f"{_with_interval(test, 'auroc')}, sensitivity {test['sensitivity']:.3f}, specificity "
            f"{test['specificity']:.3f} -> {run_dir}"
        )
        for warning in report["warnings"]:
            _log(f"WARNING: {warning}")
    return report


def _with_interval(metrics: Dict[str, Any], key: str) -> str:
    from fracjax.evaluation.stats import format_interval

    return format_interval(metrics.get(key), (metrics.get("intervals") or {}).get(key), 4)


def _final_evaluation(run_dir: str, splits, config: TrainConfig, history) -> Dict[str, Any]:
    """Test metrics of the best checkpoint through the restored ``Classifier``
    (the path users take, so the numbers here are theirs), with calibration
    and report.html unless ``--no-report``."""
    from fracjax.evaluation import evaluate_run

    done = evaluate_run(run_dir, splits["validation"], splits["test"], audit=config.audit, history=history,
                        report=config.report, calibrate=config.report, bootstrap=config.bootstrap,
                        seed=config.seed, log=_log)
    result = done["result"]
    out: Dict[str, Any] = {"test": result.metrics, "warnings": result.warnings()}
    if result.clean is not None:
        out["clean_test"] = result.clean
    if done["calibration"] is not None:
        out["calibration"] = done["calibration"]
    if done["report"]:
        _log(f"report: {done['report']}")
    return _jsonable(out)


def _budget_spent(config: TrainConfig, spent_seconds: float, epoch_seconds: float) -> bool:
    """True when one more epoch like the last would pass ``--train-minutes``."""
    return bool(config.train_minutes) and spent_seconds + epoch_seconds > 60.0 * config.train_minutes


def _write_metrics(path: str, history: List[Dict[str, Any]]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in history)


class _Throughput:
    """Images per second since ``start``, leaving out the ``skipped`` images
    of the step that compiled (compile time is not throughput)."""

    def __init__(self, start: float, skipped: int = 0):
        self.start, self.skipped = start, skipped

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, images: int) -> float:
        return (images - self.skipped) / max(self.seconds(), 1e-9)


def _save_latest(checkpoints, step, host_state, book, phase, config, spec, plateau_state, phase_done):
    book = dict(book)
    book["plateau"] = {k: float(v) for k, v in plateau_state._asdict().items()}
    meta = _jsonable(
        {
            "global_step": step,
            "phase": phase.number,
            "phase_done": phase_done,
            "book": book,
            "config": config.to_dict(),
            "model": spec,
        }
    )
    checkpoints.save_latest(step, host_state, meta)


def _progress(config: TrainConfig, total: int, desc: str):
    if not config.progress:
        return None
    import importlib.util

    # tqdm.auto picks widgets in a notebook and warns without ipywidgets: text bars then.
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
