"""The paper's comparison: ``fracjax compare`` (see fracjax/commands/compare.py).

    python examples/compare.py --models mobilenet_v3_small resnet50 --budget-minutes 0 --phase2-epochs 3
"""

import sys

from fracjax.commands.compare import main

if __name__ == "__main__":
    from fracjax.hostmem import reexec_with_malloc_hugepages

    reexec_with_malloc_hugepages()  # XLA:CPU's per-step scratch memory on huge pages (fracjax/hostmem.py)
    sys.exit(main(prog="examples/compare.py"))
