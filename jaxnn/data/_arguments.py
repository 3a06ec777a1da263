"""The argument checks the data sets share: ints, seeds, finite numbers, noise scales."""

from __future__ import annotations

import math

import numpy as np


def _int(value: object, name: str, who: str, minimum: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{who}: {name} must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{who}: {name} must be >= {minimum} ({why}), got {value}.")
    return int(value)


def _seed(seed: object, who: str) -> int:
    return _int(seed, "seed", who, 0, "it seeds np.random.default_rng")


def _finite(value: object, name: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{who}: {name} must be a number, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{who}: {name} must be finite, got {value!r}.")
    return v


def _noise(noise: object, who: str) -> float:
    v = _finite(noise, "noise", who)
    if v < 0:
        raise ValueError(
            f"{who}: noise is the standard deviation of the Gaussian noise added to each "
            f"coordinate and must be >= 0, got {noise!r}. Pass noise=0 for the exact shape."
        )
    return v
