"""The ``jaxnn`` console script: the library's commands (:mod:`jaxnn.cli`) and ``reproduce``.

``jaxnn gradcheck`` and ``jaxnn train`` are :mod:`jaxnn.cli`'s; ``jaxnn reproduce`` is
:mod:`jaxnn_experiments.reproduce`, added here through ``jaxnn.cli.main``'s ``commands``, so
that the library never imports the experiments. Without the experiments installed,
``python -m jaxnn.cli`` runs the library's commands alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from jaxnn import cli
from jaxnn_experiments import reproduce

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxnn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    return cli.main(argv, commands=(reproduce.add_command,))


if __name__ == "__main__":
    sys.exit(main())
