"""The XLA compilation cache that ``import fracjax`` turns on: a second
process reuses the first one's programs, the switches and the user's own
setting are honoured, and a bad size is refused naming its variable."""

import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles the hybrid model's forward pass and says what
# the cache did.
PROBE = """
import json, sys
import jax, jax.numpy as jnp
import fracjax
from fracjax import caches
from fracjax.models import registry

model = registry.create("mobilenet_v3_small", head="hybrid")
variables = registry.init_variables(model, 32, seed=0)
x = jnp.zeros((2, 32, 32, 1))
before = caches.compile_counts()
jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x).block_until_ready()
after = caches.compile_counts()
print(json.dumps({"folder": caches.compilation_cache_folder(), "jax_folder": jax.config.jax_compilation_cache_dir,
                  "requests": after.requests - before.requests, "hits": after.hits - before.hits,
                  "note": caches.cache_note(before)}))
"""


def _probe(env_changes, tmp_path, before=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))}
    env.update({"FRACJAX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ROOT, **env_changes})
    env = {k: v for k, v in env.items() if v is not None}
    done = subprocess.run([sys.executable, "-c", before + PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_second_process_takes_its_programs_from_the_cache(tmp_path):
    first, _ = _probe({}, tmp_path)
    folder = str(tmp_path / "cache" / "xla")
    assert first["folder"] == folder and first["jax_folder"] == folder
    assert first["requests"] >= 1 and first["hits"] == 0
    assert "kept in the compilation cache" in first["note"]
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700  # JAX runs what it finds there: owner only
    assert any(name.endswith("-cache") for name in os.listdir(folder)), os.listdir(folder)
    second, _ = _probe({}, tmp_path)
    assert second["hits"] == second["requests"] >= 1
    assert "from the compilation cache" in second["note"]


def test_the_cache_serves_a_process_that_compiled_before_importing_fracjax(tmp_path):
    # JAX decides at its first compile whether a cache is in use; importing fracjax later must still turn it on.
    early = "import jax\njax.jit(lambda x: x + 1)(1.0)\n"
    _probe({}, tmp_path, early)
    second, _ = _probe({}, tmp_path, early)
    assert second["hits"] == second["requests"] >= 1, second


def test_off_and_the_users_own_cache_are_left_alone(tmp_path):
    off, _ = _probe({"FRACJAX_XLA_CACHE": "off"}, tmp_path)
    assert off["folder"] is None and off["jax_folder"] is None and off["note"] == ""
    assert not (tmp_path / "cache" / "xla").exists()
    theirs = str(tmp_path / "theirs")
    own, _ = _probe({"JAX_COMPILATION_CACHE_DIR": theirs}, tmp_path)
    assert own["folder"] is None and own["jax_folder"] == theirs
    assert not (tmp_path / "cache" / "xla").exists()


@pytest.mark.parametrize("value", ["lots", "0"])
def test_a_bad_size_is_refused_naming_its_variable(tmp_path, value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update({"FRACJAX_CACHE": str(tmp_path), "FRACJAX_XLA_CACHE_MAX_MB": value, "PYTHONPATH": ROOT})
    done = subprocess.run([sys.executable, "-c", "import fracjax"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "FRACJAX_XLA_CACHE_MAX_MB must be" in done.stderr
