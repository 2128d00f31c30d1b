"""Sample X-rays to try fracjax on, in every format it reads.

    fracjax samples samples/
    fracjax predict RUN samples/

Writes samples/fractured/ and samples/not_fractured/ (an 8-bit PNG, a 16-bit PNG, a JPEG and a
DICOM of each class, drawn by the synthetic generator) and samples/labels.csv. Nothing is
overwritten: where a file is already at one of the names, nothing is written.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from fracjax.argparsing import CommandParser
from fracjax.data.sample_files import FORMATS, samples


def main(argv: Optional[List[str]] = None, prog: str = "fracjax samples") -> int:
    parser = CommandParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="where to write them (created if needed; existing files are never replaced)")
    parser.add_argument("--per-class", type=int, default=1,
                        help=f"images of each class in each format ({', '.join(FORMATS)}); default 1")
    parser.add_argument("--size", type=int, default=256, help="their width and height in pixels (32 to 4096)")
    args = parser.parse_args(argv)
    if not (1 <= args.per_class <= 1000 and 32 <= args.size <= 4096):
        parser.error(f"--per-class must be in [1, 1000] and --size in [32, 4096], got {args.per_class} and "
                     f"{args.size}")
    try:
        written = samples(args.folder, args.per_class, args.size)
    except (FileExistsError, NotADirectoryError) as err:
        parser.error(str(err))
    print(f"wrote {len(written) - 1} sample X-rays and labels.csv into {args.folder}")
    for path in written:
        print(f"  {path}")
    return 0
