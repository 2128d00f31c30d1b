"""The host input pipeline: batches of numpy arrays from a TFDS data source
(or arrays in memory), through grain.

Order is pure index arithmetic (:class:`TrainOrder`): epoch ``e`` visits the
examples in a permutation seeded by ``(seed, e)``; global step ``s`` of the run
is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``; process
``p`` of ``P`` takes its contiguous slice of each global batch. So the same
seed gives the same order on any number of hosts, and resuming at a step
continues the same order mid-epoch. grain provides random access to the
source and threaded prefetching.

Training batches drop each epoch's remainder (a different remainder each
epoch); evaluation batches keep every example: the last batch is padded and
carries ``mask`` False on the padding.

A batch is ``{"image": uint8 (b, S, S, 1), "label": int32 (b,), "index":
int64 (b,), "mask": bool (b,)}`` where ``index`` is the example's position in
the split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

Batch = Dict[str, np.ndarray]


def process_info():
    """(process_index, process_count) from JAX, or (0, 1) without it."""
    try:
        import jax

        return jax.process_index(), jax.process_count()
    except Exception:  # pragma: no cover - jax is a dependency
        return 0, 1


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of one epoch (every step of an epoch reads it: cached, by value)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    return rng.permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class TrainOrder:
    """Which examples make up each training step's batch, for each process."""

    num_examples: int
    global_batch_size: int
    seed: int
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.global_batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.global_batch_size}")
        if self.global_batch_size % self.process_count:
            raise ValueError(
                f"global batch size {self.global_batch_size} is not divisible by {self.process_count} processes"
            )
        if self.num_examples < self.global_batch_size:
            raise ValueError(
                f"{self.num_examples} examples are fewer than one batch of {self.global_batch_size}"
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process index {self.process_index} out of range for {self.process_count} processes")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.global_batch_size

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    def permutation(self, epoch: int) -> np.ndarray:
        return _permutation(self.num_examples, self.seed, epoch)

    def indices(self, step: int) -> np.ndarray:
        """This process's example indices for global step ``step``."""
        epoch, within = divmod(int(step), self.steps_per_epoch)
        start = within * self.global_batch_size + self.process_index * self.local_batch_size
        return self.permutation(epoch)[start : start + self.local_batch_size]


class ArraySource:
    """A split held in memory: ``images`` (N, S, S, C) uint8, ``labels`` (N,),
    optional ``filenames`` and ``fields`` (what else the data set knows of each
    example: patient, study, body part, boxes; {name: N values}); indexable
    like a TFDS data source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, filenames: Optional[Sequence[str]] = None,
                 fields: Optional[Dict[str, Sequence]] = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self.filenames = list(filenames) if filenames is not None else [f"{i:05d}" for i in range(len(images))]
        self.fields = {name: list(values) for name, values in (fields or {}).items()}
        wrong = {name: len(v) for name, v in self.fields.items() if len(v) != len(images)}
        if wrong:
            raise ValueError(f"{len(images)} images but field lengths {wrong}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        example = {"image": self.images[i], "label": self.labels[i], "filename": self.filenames[i]}
        example.update((name, values[i]) for name, values in self.fields.items())
        return example


def split_names(split: str, available: Sequence[str]) -> List[str]:
    """The splits ``split`` names: one (``test``), several joined with ``+``
    (``validation+test``), or ``all``; refused with the valid names otherwise."""
    names = list(available) if split == "all" else split.split("+")
    unknown = [name for name in names if name not in available]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--split {split!r}: the splits are {', '.join(available)}; or 'all', or several joined "
                         "with '+' (validation+test)")
    return names


def first_line(err: BaseException, limit: int = 300) -> str:
    """An error's type and first line: TFDS's "not found" errors go on to list
    every data set it knows (hundreds of lines)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:limit]}"


def load_arrays(source) -> ArraySource:
    """Decode a whole split into memory (for small sets: 3,000 images at 224
    are 150 MB)."""
    if isinstance(source, ArraySource):
        return source
    n = len(source)
    first = source[0]
    images = np.empty((n, *np.shape(first["image"])), np.uint8)
    labels = np.empty((n,), np.int32)
    filenames = []
    fields: Dict[str, list] = {name: [] for name in first if name not in CORE_FEATURES}
    for i in range(n):
        ex = first if i == 0 else source[i]
        images[i] = ex["image"]
        labels[i] = ex["label"]
        filenames.append(as_text(ex.get("filename", f"{i:05d}")))
        for name, values in fields.items():
            values.append(field_value(ex[name]))
    return ArraySource(images, labels, filenames, fields)


CORE_FEATURES = ("image", "label", "filename")


def as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def field_value(value):
    """A stored per-example field as Python/numpy: text as str, arrays (boxes) as float32."""
    if isinstance(value, (bytes, str)):
        return as_text(value)
    array = np.asarray(value)
    return array.astype(np.float32) if array.ndim else array.item()


def gather(source, indices: np.ndarray, mask: Optional[np.ndarray] = None) -> Batch:
    """Assemble one batch from a source."""
    indices = np.asarray(indices, np.int64)
    if isinstance(source, ArraySource):
        images = source.images[indices]
        labels = source.labels[indices]
    else:
        examples = [source[int(i)] for i in indices]
        images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
        labels = np.asarray([e["label"] for e in examples], np.int32)
    if mask is None:
        mask = np.ones(len(indices), bool)
    return {"image": images, "label": labels, "index": indices, "mask": mask}


def _grain_batches(source, num_steps: int, batch_at, prefetch: int, threads: int) -> Iterator[Batch]:
    """Random-access batches through grain with threaded prefetching."""
    import grain

    dataset = grain.MapDataset.range(num_steps).map(batch_at)
    if threads <= 0:
        yield from (dataset[i] for i in range(num_steps))
        return
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    yield from dataset.to_iter_dataset(options)


def train_batches(
    source,
    order: TrainOrder,
    start_step: int = 0,
    num_steps: Optional[int] = None,
    prefetch: int = 4,
    threads: int = 2,
) -> Iterator[Batch]:
    """Training batches for global steps ``start_step, start_step + 1, ...``
    (``num_steps`` of them, default: to the end of the current epoch)."""
    if len(source) != order.num_examples:
        raise ValueError(f"source has {len(source)} examples, the order was made for {order.num_examples}")
    if num_steps is None:
        num_steps = order.steps_per_epoch - start_step % order.steps_per_epoch
    return _grain_batches(
        source, num_steps, lambda i: gather(source, order.indices(start_step + int(i))), prefetch, threads
    )


def eval_batches(
    source,
    batch_size: int,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    prefetch: int = 4,
    threads: int = 2,
) -> Iterator[Batch]:
    """Every example exactly once, in order, in batches of ``batch_size`` (per
    process); padding in the last batch(es) repeats example 0 with ``mask``
    False. All processes get the same number of batches."""
    if process_index is None or process_count is None:
        process_index, process_count = process_info()
    n = len(source)
    mine = np.arange(process_index, n, process_count)
    per_process = -(-n // process_count)
    num_batches = max(1, -(-per_process // batch_size))
    padded = np.zeros(num_batches * batch_size, np.int64)
    padded[: len(mine)] = mine
    mask = np.zeros(num_batches * batch_size, bool)
    mask[: len(mine)] = True

    def batch_at(i):
        sl = slice(int(i) * batch_size, (int(i) + 1) * batch_size)
        return gather(source, padded[sl], mask[sl])

    return _grain_batches(source, num_batches, batch_at, prefetch, threads)
