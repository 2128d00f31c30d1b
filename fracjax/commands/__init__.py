"""The ``fracjax`` command's subcommands, one module each with ``main(argv, prog)``."""
