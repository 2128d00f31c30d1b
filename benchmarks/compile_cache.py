"""Cold vs warm: each fracjax command run twice in fresh processes sharing one
compilation cache (``FRACJAX_CACHE``, a new folder), with JAX's own compile log.

    python benchmarks/compile_cache.py [--image-size 128] [--examples 96] [--repeats 1]

For each command the table gives the wall seconds and the seconds JAX spent in
XLA compilation (the sum of its "Finished XLA compilation" log lines, cache
reads included) for the first run (cold cache) and the second (warm), and the
warm/cold ratio of the compile seconds. Commands: a small training run (two
phases, one epoch each), then on its run folder predict (one PNG), explain,
evaluate (test split), export (StableHLO) and serve (until it listens, with its
batch sizes compiled). ``--off`` runs each with the cache off instead, for the
"before" column. Figures go in benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILED = re.compile(r"Finished XLA compilation of .* in ([0-9.]+) sec")


def _env(cache: str, off: bool):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
    env.update({"FRACJAX_CACHE": cache, "JAX_LOG_COMPILES": "1", "PYTHONPATH": ROOT})
    if off:
        env["FRACJAX_XLA_CACHE"] = "off"
    return env


def _run(argv, env, until=None):
    """(wall seconds, compile seconds) of ``fracjax argv``; ``until``: a line
    that ends the timing (a server's "listening" line), after which it is stopped.
    The output goes to a file (a pipe left unread would block a server that
    logs), read through a second handle of its own."""
    with tempfile.NamedTemporaryFile("w", suffix=".log") as out, open(out.name) as log:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "fracjax.cli", *argv], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, text=True)
        said = ""
        while process.poll() is None and not (until and until in said):
            time.sleep(0.05)
            said += log.read()
        wall = time.perf_counter() - start
        if process.poll() is None:
            process.kill()
        code = process.wait(timeout=60)
        lines = (said + log.read()).splitlines()
    if until is None and code != 0:
        raise RuntimeError(f"fracjax {' '.join(argv)} failed ({code}):\n" + "\n".join(lines[-30:]))
    return wall, sum(float(m.group(1)) for m in map(COMPILED.search, lines) if m)


def _sample(folder: str, size: int) -> str:
    import numpy as np
    from PIL import Image

    from fracjax.data import synthetic

    image, _ = synthetic.generate_image_and_boxes(synthetic.example_rng(0, "test", 1), 1,
                                                  synthetic.SyntheticConfig(size=size))
    path = os.path.join(folder, "xray.png")
    Image.fromarray(np.asarray(image[..., 0])).save(path)
    return path


def _commands(work: str, args, name: str):
    run = os.path.join(work, "runs", "cold")
    train = ["train", "--dataset", "synthetic_fracture/tiny", "--data-dir", os.path.join(work, "data"),
             "--image-size", str(args.image_size), "--batch-size", "16", "--train-examples", str(args.examples),
             "--phase1-epochs", "1", "--phase2-epochs", "1", "--no-progress", "--out",
             os.path.join(work, "runs"), "--name", name, "--bootstrap", "100"]
    image = os.path.join(work, "xray.png")
    return [
        ("train (small run)", train, None),
        ("predict (1 image)", ["predict", run, image], None),
        ("explain (1 image)", ["explain", run, image, "--out", os.path.join(work, f"explain-{name}")], None),
        ("evaluate (test split)", ["evaluate", run, "--bootstrap", "100", "--no-localise"], None),
        ("export (StableHLO)", ["export", run, "--out", os.path.join(work, f"export-{name}")], None),
        ("serve (until it listens)", ["serve", run, "--port", "0", "--max-batch", "8"], " on http://"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--off", action="store_true", help="the cache off in both runs (the before column)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="fracjax-cache-bench-")
    cache = os.path.join(work, "cache")
    env = _env(cache, args.off)
    _sample(work, 512)
    times = {}
    try:
        for name in ("cold", "warm"):
            for label, command, until in _commands(work, args, name):
                times.setdefault(label, []).append(_run(command, env, until))
                print(f"{name:5} {label:26} {times[label][-1][0]:7.1f} s wall, {times[label][-1][1]:6.1f} s "
                      "compiling", flush=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs)
        print(f"\ncache {'off' if args.off else 'on'}; cache folder after both: {size / 2**20:.0f} MB\n")
        print("| command | cold wall s | warm wall s | cold compile s | warm compile s | warm/cold compile |")
        print("|---|---|---|---|---|---|")
        for label, ((cold_wall, cold_c), (warm_wall, warm_c)) in times.items():
            ratio = warm_c / cold_c if cold_c else float("nan")
            print(f"| {label} | {cold_wall:.1f} | {warm_wall:.1f} | {cold_c:.1f} | {warm_c:.1f} | {ratio:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
