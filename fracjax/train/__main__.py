"""``python -m fracjax.train``: the training command line (no re-execution
here: fit says when huge pages would help; examples/train.py re-executes)."""

import sys

from fracjax.train.cli import main

sys.exit(main(prog="python -m fracjax.train"))
