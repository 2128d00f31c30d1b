"""Test-wide setup, done before anything imports keras or jax.

Keras is the numerical oracle and must run on JAX; the backend is chosen when
keras is first imported, so it is set here.

One XLA compilation cache serves the whole test session, the subprocesses and
the notebook's kernel included (they inherit the environment): many tests
compile the same small model at the same shapes, and on 2 CPU cores compiling
is most of their time. The cache changes no result (an executable is reused
only for an identical program); a fresh folder per session keeps runs apart.
"""

import atexit
import os
import shutil
import tempfile

os.environ["KERAS_BACKEND"] = "jax"

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="fracjax-tests-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
