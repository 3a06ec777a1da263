"""Benchmark: one training step, jaxnn against plain JAX, bare matmuls, Flax, Equinox, PyTorch.

The same as ``jaxnn bench`` (:mod:`jaxnn.benchmark` says what is measured and how), with the
same options::

    python benchmarks/bench_step.py [--batches 128,1024,16384] [--rounds 7] [--dtype bfloat16]
                                    [--only NAME[,NAME]] [--quick] [--out bench.json]
"""

from __future__ import annotations

import sys

from jaxnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
