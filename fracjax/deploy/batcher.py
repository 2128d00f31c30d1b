"""A dynamic batcher: requests that arrive together run as one batch.

The first waiting image starts a batch, and the images that queued while
the model ran the previous batch join it, up to ``max_batch``: batches form
greedily, so a lone request never waits for company and a busy server runs
larger batches (``max_wait_s`` > 0 also waits that long for more). The model
runs in one worker thread, so the event loop keeps accepting requests
meanwhile, and throughput grows with concurrency.
Batches are padded to a power of two so that a jitted model compiles a few
shapes, not one per batch size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, List, Optional, Tuple

import numpy as np

Run = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]


def padded_size(n: int, max_batch: int) -> int:
    """The power of two at or above ``n`` (at most ``max_batch``, itself allowed)."""
    size = 1
    while size < n:
        size *= 2
    return min(size, max_batch)


def batch_shapes(max_batch: int) -> List[int]:
    """Every batch size :func:`padded_size` can give: the powers of two below
    ``max_batch``, and ``max_batch``."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch]


def warm_up(run: Run, image_size: int, max_batch: int) -> List[int]:
    """Run ``run`` once at every batch shape the batcher can send it, so that a
    jitted model is compiled before the first request and none waits for a
    compile under load. Returns the sizes run."""
    sizes = batch_shapes(max_batch)
    for size in sizes:
        run(np.zeros((size, image_size, image_size, 1), np.float32))
    return sizes


class DynamicBatcher:
    """``await batcher.submit(pixels)`` -> (probability, logit) of one image
    (S, S, 1); ``run`` maps a float32 batch (N, S, S, 1) to (probabilities, logits)."""

    def __init__(self, run: Run, max_batch: int = 32, max_wait_s: float = 0.0):
        if max_batch < 1 or not max_wait_s >= 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.batch_sizes: List[int] = []  # of every batch run, for /healthz and the benchmark
        self._queue: Optional[asyncio.Queue] = None
        self._worker: Optional[asyncio.Task] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fracjax-model")

    async def submit(self, pixels: np.ndarray) -> Tuple[float, float]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # started in the loop that serves (each asyncio.run of a test is a new one)
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work())
        done = loop.create_future()
        await self._queue.put((np.asarray(pixels, np.float32), done))
        return await done

    async def stop(self) -> None:
        """Cancel the worker (waiting requests get CancelledError) and release the thread."""
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._worker = self._loop = None
        self._pool.shutdown(wait=True)

    async def _gather(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():  # those that queued while the model was busy
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._run_padded, np.stack([pixels for pixels, _ in batch]))
            except Exception as err:  # the model failed: every request of this batch hears why
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
                continue
            self.batch_sizes.append(len(batch))
            for i, (_, done) in enumerate(batch):
                if not done.done():  # a client that went away
                    done.set_result(tuple(float(output[i]) for output in outputs))

    def _run_padded(self, pixels: np.ndarray):
        n = len(pixels)
        size = padded_size(n, self.max_batch)
        if size > n:
            pixels = np.concatenate([pixels, np.zeros((size - n, *pixels.shape[1:]), pixels.dtype)])
        return tuple(np.asarray(output)[:n] for output in self.run(pixels))
