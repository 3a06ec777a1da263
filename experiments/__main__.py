"""``python -m jaxnn_experiments [--only NAME[,NAME]] [--quick] [--out DIR] [--quiet]``:
``jaxnn reproduce``, with the same options, output and exit status."""

import sys

from jaxnn_experiments.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
