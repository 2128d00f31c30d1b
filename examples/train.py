"""Train the paper's hybrid MobileNetV3-Small fracture classifier.

    python examples/train.py                      # synthetic set, two phases, into runs/mobilenet_v3_small_hybrid/
    python examples/train.py --dataset fracture_xray --manual-dir ~/Downloads/fracture \
        --pretrained weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5 --phase2-lr 1e-5
    python examples/train.py --resume             # continue a killed run
    python examples/train.py --help               # every flag

The same code is importable: ``fracjax.train.fit(fracjax.train.make_config(...))``.
"""

import sys

from fracjax.hostmem import reexec_with_malloc_hugepages

if __name__ == "__main__":
    reexec_with_malloc_hugepages()  # XLA:CPU's per-step scratch memory on huge pages (fracjax/hostmem.py)
    from fracjax.train.cli import main

    sys.exit(main(prog="examples/train.py"))
