"""fracjax against its peers on this machine, side by side, in one run.

    pip install -e ".[bench]"            # the peers: torch, torchvision, keras
    python benchmarks/compare.py         # hybrid MobileNetV3-Small, batch 32, 224x224, fp32
    python benchmarks/compare.py --models mobilenet_v3_small resnet50 vgg16 densenet121
    python benchmarks/compare.py --peers torch torch-cl --reps 7
    python benchmarks/compare.py --rounds 3    # every row 3 times, alternating; repetitions pooled

What is measured, for each model, on the same random data (grey X-ray-sized
uint8 images for fracjax, whose MobileNetV3 stem takes them as one channel and
sums its RGB kernel over the three equal channels, and whose other families
repeat them to RGB; the same pixels as float RGB for the peers, whose
torchvision stems convolve three equal channels -- a grey-input advantage
bounded by the stem's share of fracjax's step, ~4% (20 of 509 ms)):

* training images/s of one optimizer step (AdamW, binary cross-entropy on the
  paper's hybrid head): fracjax's own ``train_step`` (the one ``fit`` runs),
  with its on-device augmentation and without it; the peers without
  augmentation (so compare them with fracjax's "no augment" row);
* inference images/s at the batch size, and the latency of one image;
* compile / first-call time, on its own line (never inside a throughput);
* the machine's measured fp32 matmul peak and each model's FLOPs per image
  (XLA's count of the forward; training taken as 3x the forward), so each
  throughput reads as a fraction of what the hardware could do;
* the input pipeline's images/s (batching from memory + the augmentation)
  beside the train step's, since it must keep up.

Peers: PyTorch/torchvision eager in the default (NCHW) and channels_last
memory formats, ``torch.compile`` (where it works here), and Keras 3 on the
JAX backend (``keras.applications`` + the same head, ``train_on_batch``).
Each peer runs in its own subprocess, so one framework's threads or flags
never slow another. Every row runs under the same host-memory setting: the
script re-executes itself with glibc's transparent-huge-page tunable where
the machine has it (fracjax/hostmem.py; ``FRACJAX_NO_HUGEPAGES=1`` keeps the
process as started), and the peers' subprocesses inherit it; the header says
which. A peer that is not installed or fails is reported as
such, never estimated. The "fracjax speedup" columns are fracjax / peer for
throughputs and peer / fracjax for latency: above 1, fracjax is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

PEERS = ("torch", "torch-cl", "torch-compile", "keras-jax", "export-stablehlo", "export-onnx", "torch-onnx")
TORCHVISION = {
    "mobilenet_v3_small": ("mobilenet_v3_small", 576),
    "mobilenet_v3_large": ("mobilenet_v3_large", 960),
    "resnet50": ("resnet50", 2048),
    "vgg16": ("vgg16", 512),
    "densenet121": ("densenet121", 1024),
}
KERAS = {
    "mobilenet_v3_small": "MobileNetV3Small",
    "mobilenet_v3_large": "MobileNetV3Large",
    "resnet50": "ResNet50",
    "vgg16": "VGG16",
    "densenet121": "DenseNet121",
}


def repeat_timed(fn: Callable[[], object], reps: int, sync: Callable[[object], object] = lambda r: r) -> Dict:
    """First call (compile, warm-up) apart; then ``reps`` timed calls."""
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    sync(fn())  # a second warm-up: allocators, caches
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return {"first_s": first, "times_s": times}


def random_batch(batch: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 2, (batch,)).astype(np.int32)
    return images, labels


# --------------------------------------------------------------------------
# fracjax.
# --------------------------------------------------------------------------


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    r = repeat_timed(lambda: f(a), reps, jax.block_until_ready)
    return 2 * n**3 / min(r["times_s"]) / 1e9


def bench_fracjax(model_name: str, batch: int, size: int, reps: int) -> Dict:
    import jax
    import jax.numpy as jnp

    import fracjax
    from fracjax.data.augment import AugmentConfig
    from fracjax.train.steps import StepConfig, eval_step, make_train_step

    model = fracjax.models.create(model_name, head="hybrid")
    images, labels = random_batch(batch, size)
    variables = jax.jit(
        lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, size, size, 1), jnp.float32))
    )(jax.random.key(0))
    out: Dict = {"name": "fracjax", "model": model_name}

    for label, augment in (("train", AugmentConfig()), ("train_noaug", None)):
        # The step fit runs: phase 2, AdamW, gradient clipping, jit on this machine's devices.
        step = make_train_step(model, variables["params"], phase=2, learning_rate=1e-3, weight_decay=1e-4,
                               grad_clip=1.0, config=StepConfig(backbone_train=True, augment=augment))
        device_batch = step.parallel.put_batch({"image": images, "label": labels})
        holder = {"state": step.init_state(variables, jax.random.key(1))}  # a copy: the step donates it

        def run():
            holder["state"], metrics = step.compiled(holder["state"], device_batch)
            return metrics["loss"]

        out[label] = repeat_timed(run, reps, jax.block_until_ready)

    infer = jax.jit(lambda v, x: jax.nn.sigmoid(eval_step(v, {"image": x}, apply_fn=model.apply)))  # as torch's row
    x = device_batch["image"]
    out["infer"] = repeat_timed(lambda: infer(variables, x), reps, jax.block_until_ready)
    one = x[:1]
    out["latency"] = repeat_timed(lambda: infer(variables, one), max(reps, 20), jax.block_until_ready)
    cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, one.astype(jnp.float32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["forward_flops"] = float(cost.get("flops", float("nan"))) if cost else float("nan")
    out["pipeline"] = bench_pipeline(batch, size, reps)
    return out


def bench_pipeline(batch: int, size: int, reps: int) -> Dict:
    """Batching from memory through grain, then the jitted augmentation."""
    import jax

    from fracjax.data import augment, pipeline

    n = batch * 16
    images, _ = random_batch(n, size, seed=1)
    source = pipeline.ArraySource(images, np.zeros(n, np.int32), [str(i) for i in range(n)])
    order = pipeline.TrainOrder(n, batch, seed=0)
    it = iter(pipeline.train_batches(source, order, 0, 10**6, threads=2))
    next(it)
    start = time.perf_counter()
    count = 0
    for _ in range(max(reps, 10)):
        count += len(next(it)["image"])
    batching = count / (time.perf_counter() - start)
    fn = jax.jit(augment.augment_batch, static_argnums=2)
    x = jax.device_put(images[:batch])
    r = repeat_timed(lambda: fn(jax.random.key(0), x, augment.AugmentConfig()), reps, jax.block_until_ready)
    aug = batch / statistics.median(r["times_s"])
    return {"batching_img_s": batching, "augment_img_s": aug, "both_img_s": 1.0 / (1.0 / batching + 1.0 / aug)}


# --------------------------------------------------------------------------
# Peers (each in its own process).
# --------------------------------------------------------------------------


def torch_hybrid(model_name: str):
    """torchvision's backbone with the paper's hybrid head, as fracjax builds it."""
    import torch
    import torchvision

    arch, channels = TORCHVISION[model_name]
    tv = getattr(torchvision.models, arch)(weights=None)
    if arch.startswith("resnet"):  # no .features: everything before the pooling and the classifier
        backbone = torch.nn.Sequential(*list(tv.children())[:-2])
    elif arch.startswith("densenet"):  # its features end at a BatchNorm; Keras's at the ReLU after it
        backbone = torch.nn.Sequential(tv.features, torch.nn.ReLU())
    else:
        backbone = tv.features
    head = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 256, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(256, eps=1e-3),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.25),
        torch.nn.Conv2d(256, 128, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(128, eps=1e-3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(128, 1),
    )
    return torch.nn.Sequential(backbone, head)


def torch_pixels(batch: int, size: int):
    """The benchmark's grey images as torchvision takes them: float RGB in [0, 1], NCHW."""
    import torch

    images, labels = random_batch(batch, size)
    x = torch.from_numpy(np.repeat(images, 3, -1).astype(np.float32)).permute(0, 3, 1, 2).contiguous() / 255.0
    return x, torch.from_numpy(labels.astype(np.float32))


def bench_torch(model_name: str, batch: int, size: int, reps: int, variant: str) -> Dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = torch_hybrid(model_name)
    x, y = torch_pixels(batch, size)
    if variant in ("torch-cl", "torch-compile"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    runner = torch.compile(model) if variant == "torch-compile" else model

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(runner(x)[:, 0], y)
        loss.backward()
        opt.step()
        return loss.item()

    out: Dict = {"name": variant, "model": model_name, "version": torch.__version__}
    out["train_noaug"] = repeat_timed(train, reps)
    model.eval()

    def infer(inp):
        with torch.inference_mode():
            return torch.sigmoid(runner(inp)).numpy()

    out["infer"] = repeat_timed(lambda: infer(x), reps)
    one = x[:1].contiguous(memory_format=torch.channels_last) if variant != "torch" else x[:1].contiguous()
    out["latency"] = repeat_timed(lambda: infer(one), max(reps, 20))
    return out


def bench_keras_jax(model_name: str, batch: int, size: int, reps: int) -> Dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import keras

    application = KERAS[model_name]
    inputs = keras.Input((size, size, 3))
    features = getattr(keras.applications, application)(include_top=False, weights=None, input_tensor=inputs)
    h = features.output
    h = keras.layers.Conv2D(256, 3, padding="same", use_bias=False)(h)
    h = keras.layers.Dropout(0.25)(keras.layers.ReLU()(keras.layers.BatchNormalization()(h)))
    h = keras.layers.Conv2D(128, 3, padding="same", use_bias=False)(h)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
    h = keras.layers.Dropout(0.3)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.AdamW(1e-3, weight_decay=1e-4), keras.losses.BinaryCrossentropy(from_logits=True))
    images, labels = random_batch(batch, size)
    x = np.repeat(images, 3, -1).astype(np.float32)
    y = labels.astype(np.float32)
    out: Dict = {"name": "keras-jax", "model": model_name, "version": keras.__version__}
    out["train_noaug"] = repeat_timed(lambda: model.train_on_batch(x, y), reps)
    out["infer"] = repeat_timed(lambda: model.predict_on_batch(x), reps)
    out["latency"] = repeat_timed(lambda: model.predict_on_batch(x[:1]), max(reps, 10))
    return out


def bench_export(model_name: str, batch: int, size: int, reps: int, fmt: str) -> Dict:
    """The same model exported (fracjax.export) and run as a deployment would: the StableHLO
    artifact through jax.export alone, the ONNX one through onnxruntime. Inference only."""
    import tempfile

    import jax
    import jax.numpy as jnp

    import fracjax
    from fracjax.inference import Classifier

    model = fracjax.models.create(model_name, head="hybrid")
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 1)), train=False))(jax.random.key(0))
    spec = {"model": model_name, "head": "hybrid", "image_size": size, "threshold": 0.5}
    classifier = Classifier(spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, batch)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        loaded = fracjax.deploy.load(fracjax.export(classifier, os.path.join(tmp, "e"), format=fmt))
        export_s = time.perf_counter() - start
    x = np.asarray(random_batch(batch, size)[0], np.float32)
    if fmt == "onnx":
        import onnxruntime
        version = f"onnxruntime {onnxruntime.__version__}"
    else:
        version = f"jax {jax.__version__}"
    loaded.run(x[:1])  # the first call of each shape compiles (StableHLO) or plans (onnxruntime)
    loaded.run(x)
    return {"name": f"export {fmt}", "version": version, "model": model_name, "first_s": export_s,
            "train_noaug": None, "infer": repeat_timed(lambda: loaded.run(x), reps),
            "latency": repeat_timed(lambda: loaded.run(x[:1]), max(reps, 20))}


def onnx_session(blob: bytes):
    """An onnxruntime CPU session with every graph optimisation: the same for every ONNX row."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])


def bench_torch_onnx(model_name: str, batch: int, size: int, reps: int) -> Dict:
    """torchvision's model with the hybrid head, exported by torch.onnx.export (TorchScript
    exporter, opset 18, dynamic batch) and run by onnxruntime: the ONNX a PyTorch user deploys."""
    import io

    import onnxruntime
    import torch

    model = torch_hybrid(model_name).eval()
    x, _ = torch_pixels(batch, size)
    start = time.perf_counter()
    buffer = io.BytesIO()
    torch.onnx.export(model, (x[:1],), buffer, input_names=["pixels"], output_names=["logit"], opset_version=18,
                      dynamic_axes={"pixels": {0: "batch"}, "logit": {0: "batch"}}, dynamo=False)
    session = onnx_session(buffer.getvalue())
    export_s = time.perf_counter() - start
    pixels = x.numpy()
    run = lambda inp: session.run(None, {"pixels": inp})  # noqa: E731
    run(pixels[:1])
    run(pixels)
    return {"name": "torch onnx", "model": model_name, "first_s": export_s, "train_noaug": None,
            "version": f"onnxruntime {onnxruntime.__version__}", "infer": repeat_timed(lambda: run(pixels), reps),
            "latency": repeat_timed(lambda: run(pixels[:1]), max(reps, 20))}


def run_peer(peer: str, model_name: str, args) -> Dict:
    """Run one peer in a subprocess; its JSON result, or why there is none."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", peer, "--models", model_name,
           "--batch", str(args.batch), "--size", str(args.size), "--reps", str(args.peer_reps or args.reps)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout)
    except subprocess.TimeoutExpired:
        return {"name": peer, "model": model_name, "error": f"timed out after {args.peer_timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"name": peer, "model": model_name, "error": tail[:160]}


def worker(peer: str, model_name: str, args) -> None:
    try:
        if peer == "torch-onnx":
            result = bench_torch_onnx(model_name, args.batch, args.size, args.reps)
        elif peer.startswith("torch"):
            if model_name not in TORCHVISION:
                raise RuntimeError(f"torchvision has no {model_name}")
            result = bench_torch(model_name, args.batch, args.size, args.reps, peer)
        elif peer == "keras-jax":
            result = bench_keras_jax(model_name, args.batch, args.size, args.reps)
        elif peer.startswith("export-"):
            result = bench_export(model_name, args.batch, args.size, args.reps, peer.split("-", 1)[1])
        else:
            raise ValueError(f"unknown peer {peer}")
    except ModuleNotFoundError as err:
        result = {"name": peer, "model": model_name, "error": f"not installed ({err.name}); pip install -e '.[bench]'"}
    except Exception as err:  # reported in the table, never hidden
        result = {"name": peer, "model": model_name, "error": f"{type(err).__name__}: {str(err)[:150]}"}
    print(json.dumps(result))


# --------------------------------------------------------------------------
# The table.
# --------------------------------------------------------------------------


def median(r: Optional[Dict]) -> float:
    return statistics.median(r["times_s"]) if r else float("nan")


def spread_pct(r: Optional[Dict]) -> float:
    if not r:
        return float("nan")
    t = r["times_s"]
    return 100.0 * (max(t) - min(t)) / 2 / statistics.median(t)


def pool_rounds(rounds: List[Dict]) -> Dict:
    """One result from several rounds of the same row: the timed repetitions
    of every measurement pooled, the first round's first-call time, its other
    fields (FLOPs, pipeline, version) kept. Rounds that failed are dropped;
    if all failed, the first failure is the result."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[0]
    pooled = dict(ok[0])
    for key, value in ok[0].items():
        if isinstance(value, dict) and "times_s" in value:
            pooled[key] = {"first_s": value["first_s"], "times_s": [t for r in ok for t in r[key]["times_s"]]}
    return pooled


def table(model_name: str, ours: Dict, peers: List[Dict], batch: int, peak: float) -> str:
    rows = []
    train_ref = batch / median(ours["train_noaug"])
    infer_ref = batch / median(ours["infer"])
    latency_ref = median(ours["latency"]) * 1e3
    header = (f"{'':<24} {'train img/s':>12} {'speedup':>9} {'infer img/s':>12} {'speedup':>9} "
              f"{'1-image ms':>11} {'speedup':>9} {'first call s':>13}")
    rows.append(header)
    rows.append("-" * len(header))

    def row(label, train, infer, latency, first):
        t = batch / median(train) if train else float("nan")
        i = batch / median(infer) if infer else float("nan")
        ms = median(latency) * 1e3 if latency else float("nan")
        rows.append(
            f"{label:<24} {t:8.1f} ±{spread_pct(train):2.0f}% {train_ref / t:9.2f} {i:8.1f} ±{spread_pct(infer):2.0f}% "
            f"{infer_ref / i:9.2f} {ms:11.1f} {ms / latency_ref:9.2f} {first:13.1f}"
        )

    row("fracjax (augment)", ours["train"], None, None, ours["train"]["first_s"])
    # The peers train without augmentation: compare them with this row.
    row("fracjax (no augment)", ours["train_noaug"], ours["infer"], ours["latency"], ours["train_noaug"]["first_s"])
    for p in peers:
        if "error" in p:
            rows.append(f"{p['name']:<24} {'-- ' + p['error']}")
        else:
            first = p["train_noaug"]["first_s"] if p.get("train_noaug") else p["first_s"]  # exports: the export
            row(f"{p['name']} {p.get('version', '')}"[:24], p["train_noaug"], p["infer"], p["latency"], first)
    rows.extend(onnx_ratio(peers, batch))
    flops = ours["forward_flops"]
    train_img_s = batch / median(ours["train_noaug"])
    infer_img_s = batch / median(ours["infer"])
    rows.append(
        f"FLOPs/image: forward {flops / 1e9:.2f} G (XLA count), training ~{3 * flops / 1e9:.2f} G; "
        f"fracjax uses {100 * 3 * flops * train_img_s / (peak * 1e9):.1f}% of the matmul peak training, "
        f"{100 * flops * infer_img_s / (peak * 1e9):.1f}% inferring"
    )
    p = ours["pipeline"]
    rows.append(
        f"input pipeline: batching {p['batching_img_s']:.0f} img/s, augmentation {p['augment_img_s']:.0f} img/s, "
        f"back to back {p['both_img_s']:.0f} img/s vs the train step's {batch / median(ours['train']):.0f} img/s"
    )
    return f"\n== {model_name} (hybrid head), batch {batch}, {args_size_label(ours)} ==\n" + "\n".join(rows)


def onnx_ratio(peers: List[Dict], batch: int) -> List[str]:
    """fracjax's ONNX against PyTorch's, both in onnxruntime: the line issue 33 asks for."""
    found = {p["name"]: p for p in peers if "error" not in p}
    ours, theirs = found.get("export onnx"), found.get("torch onnx")
    if not ours or not theirs:
        return []
    throughput = median(theirs["infer"]) / median(ours["infer"])
    latency = median(theirs["latency"]) / median(ours["latency"])
    return [f"ONNX in onnxruntime, fracjax's / PyTorch's (>1: fracjax faster): batch {batch} {throughput:.2f}x "
            f"images/s, 1 image {latency:.2f}x (latency)"]


def args_size_label(ours: Dict) -> str:
    return ours.get("size_label", "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small"])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions after the warm-up")
    parser.add_argument("--peer-reps", type=int, default=None, help="repetitions for the peers (default --reps)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run fracjax and every peer this many times, alternating, and pool the repetitions "
                             "(a slow spell of the machine then falls on every row alike)")
    parser.add_argument("--peer-timeout", type=int, default=900)
    parser.add_argument("--json", default=None, help="also write every measurement here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args.worker, args.models[0], args)
        return

    import jax

    from fracjax.hostmem import malloc_hugepages_enabled

    print(f"{os.cpu_count()} CPU(s); jax {jax.__version__} on {jax.default_backend()}; fp32; "
          f"batch {args.batch}, {args.size}x{args.size}; {args.reps} timed repetitions"
          + (f" in each of {args.rounds} alternating rounds" if args.rounds > 1 else "") + " (median ± half range)")
    print("host memory: malloc on transparent huge pages for every row (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"
          if malloc_hugepages_enabled() else "host memory: malloc as the process started (4 KiB pages)")
    peak = matmul_peak_gflops()
    print(f"measured fp32 matmul peak (2048^2, jax): {peak:.0f} GFLOP/s")
    everything = {"peak_gflops": peak, "models": {}}
    for model_name in args.models:
        our_rounds, peer_rounds = [], {peer: [] for peer in args.peers}
        for _ in range(max(args.rounds, 1)):
            our_rounds.append(bench_fracjax(model_name, args.batch, args.size, args.reps))
            for peer in args.peers:
                peer_rounds[peer].append(run_peer(peer, model_name, args))
        ours = pool_rounds(our_rounds)
        ours["size_label"] = f"{args.size}x{args.size}"
        peers = [pool_rounds(peer_rounds[peer]) for peer in args.peers]
        everything["models"][model_name] = {"fracjax": ours, "peers": peers}
        print(table(model_name, ours, peers, args.batch, peak), flush=True)
    print("speedup: fracjax's advantage over that row (fracjax / peer images/s; peer / fracjax ms); >1: fracjax faster")
    print("first call s: compile (fracjax, torch.compile) or warm-up; for the exports, exporting with its parity "
          "check; excluded from the throughputs. Exports are inference only (no train column)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    from fracjax.hostmem import reexec_with_malloc_hugepages

    if "--worker" not in sys.argv:
        reexec_with_malloc_hugepages()  # every row, peers included, under the same setting
    main()
