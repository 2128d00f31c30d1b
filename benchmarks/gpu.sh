#!/usr/bin/env bash
# The GPU check: one script, nothing but jax, flax, optax, orbax-checkpoint and
# chex needed (the device machine has no tensorflow-datasets or grain).
#   bash benchmarks/gpu.sh            # prints the throughput / roofline table
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jax; print(jax.devices())"
python benchmarks/gpu.py --batch 256 --size 224 --steps 30 "$@"
