import sys

from fracjax.train.cli import main

sys.exit(main())
