import sys

from fracjax.hostmem import reexec_with_malloc_hugepages

reexec_with_malloc_hugepages()  # XLA:CPU's per-step scratch memory on huge pages (fracjax/hostmem.py)

from fracjax.train.cli import main  # noqa: E402

sys.exit(main())
