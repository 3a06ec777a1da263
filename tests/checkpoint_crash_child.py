"""The process that tests/test_checkpoint.py kills while it saves a checkpoint.

``python checkpoint_crash_child.py DIRECTORY MEGABYTES``: saves :func:`small_state` as step 1,
prints ``saving step 2``, then saves ``MEGABYTES`` of random float32 as step 2 (which the
parent kills midway) and prints ``saved step 2`` if it gets that far.
"""

import sys

import numpy as np


def small_state() -> dict[str, np.ndarray]:
    """What step 1 holds (the parent rebuilds it to compare)."""
    return {
        "w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4),
        "step": np.array(1, dtype=np.int32),
    }


def main() -> None:
    from jaxnn import checkpoint

    directory, megabytes = sys.argv[1], int(sys.argv[2])
    checkpoint.save(directory, small_state(), step=1, config={"run": "crash"})
    # Random bits: incompressible, so writing them takes as long as their size says.
    big = np.random.default_rng(0).random(megabytes * 2**18, dtype=np.float32)
    print("saving step 2", flush=True)
    checkpoint.save(directory, {"w": big, "step": np.array(2, dtype=np.int32)}, step=2)
    print("saved step 2", flush=True)


if __name__ == "__main__":
    main()
