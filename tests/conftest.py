"""Test-wide setup. Keras is the numerical oracle and must run on JAX; the
backend is chosen when keras is first imported, so it is set here."""

import os

os.environ["KERAS_BACKEND"] = "jax"
