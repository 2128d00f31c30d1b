"""Fracture probabilities for X-ray files, from a trained run's best checkpoint
(the ``fracjax predict`` command; ``--help`` for its options).

    python examples/predict.py runs/mobilenet_v3_small_hybrid xray1.png xray2.jpg study.dcm
"""

import sys

from fracjax.commands.predict import main

if __name__ == "__main__":
    sys.exit(main(prog="examples/predict.py"))
