"""The argument parser every fracjax command uses: argparse's, with errors a person can read at
once (the reason and how to see the options, not a screen of usage first) and a suggestion for a
misspelt option."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import NoReturn


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are two lines: ``prog: error: reason`` (with "did
    you mean --x?" for an unknown option close to a known one), then where the options are listed.
    The exit status stays argparse's 2."""

    def error(self, message: str) -> NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [s for action in self._actions for s in action.option_strings]
            hints = [f"{word} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
                word.split("=")[0], flags, n=1, cutoff=0.6)) else word for word in unknown.group(1).split()]
            message = "unrecognized arguments: " + " ".join(hints)
        sys.stderr.write(f"{self.prog}: error: {message}\n  ({self.prog} --help lists every option)\n")
        sys.exit(2)
