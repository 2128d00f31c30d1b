"""Grad-CAM overlays for X-ray files, from a trained run's best checkpoint
(the ``fracjax explain`` command; ``--help`` for its options).

    python examples/explain.py runs/mobilenet_v3_small_hybrid xray1.png study.dcm
    python examples/explain.py RUN FILES... --method gradcam++ --layer backbone/block8 --out explained/
"""

import sys

from fracjax.commands.explain import main

if __name__ == "__main__":
    sys.exit(main(prog="examples/explain.py"))
