"""Training as several processes on JAX's distributed runtime, on one machine:
2 processes x 2 CPU devices (gloo collectives, a coordinator on 127.0.0.1)
against 1 process x 4 devices on the same data and seed; resuming on another
process count; a killed process stopping the other."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.fitting import latest_variables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEARTBEAT_S = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(data_dir, out, name, *extra):
    # 64 validation examples in global batches of 24: a ragged last batch, padded and masked.
    return ["--dataset", "synthetic_fracture/tiny", "--data-dir", data_dir, "--out", str(out), "--name", name,
            "--image-size", "32", "--batch-size", "16", "--train-examples", "64", "--phase1-epochs", "1",
            "--phase2-epochs", "0", "--eval-batch-size", "24", "--no-progress", "--seed", "3", "--no-report",
            "--bootstrap", "0", *extra]


def _start(flags, processes: int, devices: int):
    """``processes`` training processes with ``devices`` CPU devices each."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", PYTHONUNBUFFERED="1")
    procs = []
    for i in range(processes):
        several = (["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i),
                    "--heartbeat-timeout", str(HEARTBEAT_S)] if processes > 1 else [])
        procs.append(subprocess.Popen([sys.executable, "-m", "fracjax.train", *flags, *several], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _run(flags, processes: int, devices: int, timeout: float = 300):
    procs = _start(flags, processes, devices)
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a training process did not finish in {timeout} s")
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


def _history(run):
    drop = ("seconds", "images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_model(a, b):
    step_a, va = latest_variables(a)
    step_b, vb = latest_variables(b)
    assert step_a == step_b == 4
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(va), jax.tree_util.tree_leaves(vb), strict=True):
        # Gloo sums the gradients across processes in another order than one process does.
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Three runs stopped at step 2 and resumed to step 4: on the same process count (1 process x 4
    devices: the reference, as a resume on the same devices is bitwise the uninterrupted run, test_fit),
    and on the other count (2 processes x 2 devices, then 1 x 4; and the reverse). The reverse's first
    half is the reference's (a copy of its run folder at step 2): one launch fewer."""
    out = tmp_path_factory.mktemp("mp")
    said = {"one": _run(_flags(data_dir, out, "one", "--max-steps", "2"), 1, 4)}
    shutil.copytree(out / "one", out / "one_then_two")
    said["one_then_two"] = list(said["one"])
    said["two_then_one"] = _run(_flags(data_dir, out, "two_then_one", "--max-steps", "2"), 2, 2)
    for name, then in (("one", (1, 4)), ("two_then_one", (1, 4)), ("one_then_two", (2, 2))):
        said[name] += _run(_flags(data_dir, out, name, "--max-steps", "4", "--resume"), *then)
    return out, said


def test_a_run_resumes_on_another_process_count(runs):
    out, _ = runs
    # The same model as the uninterrupted run: the data order continues across process counts.
    _assert_same_model(out / "one", out / "two_then_one")
    _assert_same_model(out / "one", out / "one_then_two")


def test_two_processes_evaluate_every_example_once_and_only_process_0_writes(runs):
    out, said = runs
    one, two = _history(out / "one")[-1], _history(out / "one_then_two")[-1]  # step 4: two processes validated
    assert (one["epoch"], one["step"]) == (two["epoch"], two["step"]) == (1, 4)
    va, vb = one["validation"], two["validation"]
    # Every validation example counted once, the ragged last batch included.
    assert va["n"] == vb["n"] == 64 and sum(vb["confusion"].values()) == 64
    assert va["confusion"] == vb["confusion"]
    assert vb["loss"] == pytest.approx(va["loss"], abs=1e-5)
    reports = [json.loads((out / name / "report.json").read_text()) for name in ("one", "one_then_two")]
    assert reports[0]["test"]["n"] == reports[1]["test"]["n"] == 64
    assert reports[1]["test"]["confusion"] == reports[0]["test"]["confusion"]
    # Process 0 speaks and writes for the run; process 1 trains silently.
    process0, process1 = said["one_then_two"][1:]
    assert "process 0 of 2: 2 of 4 cpu devices; global batch 16, 8 per process" in process0
    assert "resumed from step 2" in process0 and "epoch 1 (phase 1)" in process0
    assert "epoch 1 (phase 1)" not in process1
    assert len((out / "one_then_two" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_killed_process_stops_the_other_instead_of_hanging(data_dir, tmp_path):
    flags = _flags(data_dir, tmp_path, "killed", "--phase1-epochs", "200")
    procs = _start(flags, 2, 2)
    try:
        first_line_seen = time.monotonic() + 240
        lines = []
        while time.monotonic() < first_line_seen:
            line = procs[0].stdout.readline()
            if not line and procs[0].poll() is not None:
                pytest.fail("process 0 ended before an epoch:\n" + "".join(lines[-30:]))
            lines.append(line)
            if "epoch 1 (phase 1)" in line:
                break
        else:
            pytest.fail("process 0 did not finish an epoch:\n" + "".join(lines[-30:]))
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rest = procs[0].communicate(timeout=HEARTBEAT_S + 60)[0]
        stopped_after = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode != 0
    assert stopped_after < HEARTBEAT_S + 60
    assert "another task died" in rest or "heartbeat timeout" in rest, rest[-2000:]
