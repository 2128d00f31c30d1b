"""jit-sharded and per-device (shard_map) steps on 8 host devices against 1 device (a
subprocess: the device count is fixed when JAX starts)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "multidevice_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_jit_sharded_matches_one_device(result):
    assert result["moved"] > 1e-4  # the steps really changed the parameters
    assert result["jit8_params"] <= 1e-5, result
    assert result["jit8_stats"] <= 1e-5, result


def test_pmap_matches_one_device(result):
    assert result["pmap_params"] <= 1e-5, result
    assert result["pmap_stats"] <= 1e-5, result
    a, *others = result["loss"]
    assert all(abs(a - b) <= 1e-5 * abs(a) for b in others), result


def test_the_per_device_mode_runs_on_the_devices_it_is_given(result):
    assert result["pmap4_on"], result  # jax.pmap used every local device whatever it was given
    assert result["pmap4_params"] <= 1e-5, result
