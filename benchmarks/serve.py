"""fracjax serve under load: requests/s and latency at several concurrencies,
with the dynamic batcher and without it (one image at a time), same server,
same model, same images, in one run.

    python benchmarks/serve.py                         # a random hybrid MobileNetV3-Small at 224 px
    python benchmarks/serve.py --model runs/mobilenet_v3_small_hybrid --concurrency 1 8 32 --requests 192
    python benchmarks/serve.py --model exported_onnx/  # an export folder (StableHLO or ONNX)

Each configuration starts its own ``fracjax serve`` process on a free port
(the clients stay in this process, so the server's event loop and model
thread are not slowed by the load generator's), which compiles every
batch shape before it listens; the client warms the upload path, then
sends ``--requests`` uploads of one 512x512 16-bit PNG each,
``--concurrency`` at a time, and reports requests/s and the p50/p95
latency of a request. The "batched / one at a time" column is the ratio of
the two servers' requests/s at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _random_run(folder: str, image_size: int) -> str:
    import jax
    import jax.numpy as jnp

    import fracjax
    from fracjax.checkpoint import RunCheckpoints

    spec = {"model": "mobilenet_v3_small", "head": "hybrid", "image_size": image_size, "threshold": 0.5}
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
    variables = model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 1)), train=False)
    checkpoints = RunCheckpoints(folder)
    checkpoints.save_best(1, variables, {"model": spec, "step": 1})
    checkpoints.close()
    return folder


def _upload() -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(0).integers(0, 4096, (512, 512)) * 16).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _start(model: str, max_batch: int, max_wait_ms: float):
    process = subprocess.Popen([sys.executable, "-m", "fracjax.cli", "serve", model, "--port", "0",
                                "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if " on http://" not in line:
        process.kill()
        raise RuntimeError(f"fracjax serve did not start: {line}")
    return process, line.split(" on ")[1].split()[0]


async def _load(url: str, body: bytes, concurrency: int, requests: int):
    import httpx

    latencies = []
    queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(None)

    async def client(http):
        while not queue.empty():
            queue.get_nowait()
            start = time.perf_counter()
            r = await http.post(url + "/v1/predict", files=[("files", ("x.png", body, "image/png"))])
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return requests / wall, np.percentile(latencies, 50) * 1000, np.percentile(latencies, 95) * 1000


def _measure(model: str, max_batch: int, max_wait_ms: float, levels, requests: int, body: bytes):
    process, url = _start(model, max_batch, max_wait_ms)  # it compiles every batch shape before it listens
    try:
        asyncio.run(_load(url, body, 2, 8))  # the upload path's first calls
        return {c: asyncio.run(_load(url, body, c, max(requests, 2 * c))) for c in levels}
    finally:
        process.terminate()
        process.wait(60)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a run or export folder (default: a random hybrid MobileNetV3-Small)")
    p.add_argument("--image-size", type=int, default=224, help="of the random model")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="the batched server's wait for more images (0: greedy batches, fracjax serve's default)")
    args = p.parse_args(argv)
    body = _upload()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _random_run(os.path.join(tmp, "run"), args.image_size)
        batched = _measure(model, args.max_batch, args.max_wait_ms, args.concurrency, args.requests, body)
        single = _measure(model, 1, 0.0, args.concurrency, args.requests, body)
    size = f"{args.image_size} px" if not args.model else "its own size"
    print(f"fracjax serve, {args.model or 'random hybrid MobileNetV3-Small'} ({size}), max wait {args.max_wait_ms} ms, "
          f"{os.cpu_count()} CPUs, 512x512 16-bit PNG uploads, {args.requests} requests per level\n")
    print("| concurrency | batched req/s | p50 ms | p95 ms | one at a time req/s | p50 ms | p95 ms | "
          "batched / one at a time |")
    print("|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        (rb, b50, b95), (rs, s50, s95) = batched[c], single[c]
        print(f"| {c} | {rb:.1f} | {b50:.0f} | {b95:.0f} | {rs:.1f} | {s50:.0f} | {s95:.0f} | {rb / rs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
