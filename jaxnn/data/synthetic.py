"""Four synthetic two-class problems in the plane: XOR, two moons, circles, spirals.

Each generator is ``f(n=400, *, noise, seed=0, ...) -> Dataset``: ``n`` points, the two
classes as equal as ``n`` allows, rows shuffled, Gaussian noise of standard deviation
``noise`` added to each coordinate, everything drawn from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jaxnn.data._arguments import _finite, _int, _noise, _seed

__all__ = ["SYNTHETIC", "Dataset", "circles", "moons", "spirals", "xor"]


class Dataset(NamedTuple):
    """Examples and their class labels."""

    x: np.ndarray  # float32 [n, features]
    y: np.ndarray  # int32 [n], class indices in [0, num_classes)


def _synthetic_args(who: str, n: object, seed: object) -> tuple[int, np.random.Generator]:
    n = _int(n, "n", who, 4, "at least two examples of each of the two classes")
    return n, np.random.default_rng(_seed(seed, who))


def _finish(
    class0: np.ndarray, class1: np.ndarray, noise: float, rng: np.random.Generator
) -> Dataset:
    """Stack the two classes, shuffle the rows, add ``noise``-scaled Gaussian noise, cast."""
    x = np.concatenate([class0, class1])
    y = np.repeat(np.arange(2, dtype=np.int32), [len(class0), len(class1)])
    order = rng.permutation(len(y))
    # The noise is drawn whatever its scale, so a seed gives the same shuffle and the same
    # noise directions for every `noise` (noise=0 is then the exact shape).
    x = x[order] + noise * rng.standard_normal(x.shape)
    return Dataset(x.astype(np.float32), y[order])


def xor(n: int = 400, *, noise: float = 0.1, seed: int = 0) -> Dataset:
    """XOR: four Gaussian blobs at ``(±1, ±1)``, the label saying whether the signs differ.

    Class 0 sits at ``(1, 1)`` and ``(-1, -1)``, class 1 at ``(1, -1)`` and ``(-1, 1)``: the
    label of a blob's centre is ``sign(x1) != sign(x2)``. Each class alternates between its two
    blobs, so the blobs hold ``n/4`` points each when ``n`` is divisible by 4; then both
    classes have their mean at the origin, a point of both convex hulls, and no line separates
    them (Minsky & Papert, *Perceptrons*, 1969) while one hidden layer does (Rumelhart, Hinton
    & Williams 1986). With ``noise > 0`` a point keeps its blob's label even where the noise
    has carried it across an axis.

    Args:
        n: number of points, ``>= 4``; class 0 gets ``n // 2``, class 1 the rest (one more when
            ``n`` is odd).
        noise: standard deviation of the isotropic Gaussian noise around each centre.
        seed: seeds ``np.random.default_rng`` (the shuffle and the noise).

    Returns:
        A :class:`Dataset` with ``x`` ``float32 [n, 2]``, ``y`` ``int32 [n]``, rows shuffled.

    Example:
        >>> data = xor(8, noise=0.0)
        >>> bool(np.all(data.y == (np.sign(data.x[:, 0]) != np.sign(data.x[:, 1]))))
        True
    """
    n, rng = _synthetic_args("xor", n, seed)
    noise = _noise(noise, "xor")
    n0 = n // 2
    s0 = np.where(np.arange(n0) % 2 == 0, 1.0, -1.0)
    s1 = np.where(np.arange(n - n0) % 2 == 0, 1.0, -1.0)
    return _finish(np.stack([s0, s0], 1), np.stack([s1, -s1], 1), noise, rng)


def moons(n: int = 400, *, noise: float = 0.1, seed: int = 0) -> Dataset:
    """Two interleaving half circles, as scikit-learn's ``make_moons`` defines them.

    Class 0: ``(cos t, sin t)``; class 1: ``(1 - cos t, 1/2 - sin t)``; ``t`` evenly spaced on
    ``[0, π]`` (``np.linspace``, ends included) within each class. Then Gaussian noise of
    standard deviation ``noise`` on each coordinate (scikit-learn, ``sklearn.datasets.
    make_moons``; Pedregosa et al., JMLR 12, 2011). The noiseless points are those of
    ``make_moons(n, shuffle=False, noise=0)``; the shuffle and noise come from this seed's
    generator, not scikit-learn's.

    Args:
        n: number of points, ``>= 4``; class 0 (the upper moon) gets ``n // 2``, class 1 the
            rest.
        noise: standard deviation of the Gaussian noise.
        seed: seeds ``np.random.default_rng``.

    Returns:
        A :class:`Dataset` with ``x`` ``float32 [n, 2]``, ``y`` ``int32 [n]``, rows shuffled.
    """
    n, rng = _synthetic_args("moons", n, seed)
    noise = _noise(noise, "moons")
    t0 = np.linspace(0, np.pi, n // 2)
    t1 = np.linspace(0, np.pi, n - n // 2)
    outer = np.stack([np.cos(t0), np.sin(t0)], 1)
    inner = np.stack([1 - np.cos(t1), 1 - np.sin(t1) - 0.5], 1)
    return _finish(outer, inner, noise, rng)


def circles(n: int = 400, *, noise: float = 0.05, factor: float = 0.5, seed: int = 0) -> Dataset:
    """Two concentric circles, as scikit-learn's ``make_circles`` defines them.

    Class 0: the unit circle; class 1: the circle of radius ``factor``; the angles evenly
    spaced on ``[0, 2π)`` (``np.linspace(..., endpoint=False)``) within each class. Then
    Gaussian noise of standard deviation ``noise`` on each coordinate (``sklearn.datasets.
    make_circles``; the noiseless points are those of ``make_circles(n, shuffle=False,
    noise=0, factor=factor)``).

    Args:
        n: number of points, ``>= 4``; class 0 (the outer circle) gets ``n // 2``, class 1 the
            rest.
        noise: standard deviation of the Gaussian noise.
        factor: radius of the inner circle, in ``[0, 1)``.
        seed: seeds ``np.random.default_rng``.

    Returns:
        A :class:`Dataset` with ``x`` ``float32 [n, 2]``, ``y`` ``int32 [n]``, rows shuffled.
    """
    n, rng = _synthetic_args("circles", n, seed)
    noise = _noise(noise, "circles")
    factor = _finite(factor, "factor", "circles")
    if not 0 <= factor < 1:
        raise ValueError(
            f"circles: factor is the inner circle's radius relative to the outer one's and must "
            f"lie in [0, 1), got {factor!r}."
        )
    t0 = np.linspace(0, 2 * np.pi, n // 2, endpoint=False)
    t1 = np.linspace(0, 2 * np.pi, n - n // 2, endpoint=False)
    outer = np.stack([np.cos(t0), np.sin(t0)], 1)
    inner = np.stack([np.cos(t1) * factor, np.sin(t1) * factor], 1)
    return _finish(outer, inner, noise, rng)


_SPIRAL_R0 = 0.1  # innermost radius, relative to the outermost (Lang & Witbrock's: 0.5 / 6.5)


def spirals(n: int = 400, *, noise: float = 0.1, turns: float = 1.5, seed: int = 0) -> Dataset:
    """The two-spiral problem (Lang & Witbrock 1988): two interleaved Archimedean spirals.

    Class 0 is the arm ``r(t) (cos θ(t), sin θ(t))`` with

        r(t) = r0 + (1 - r0) t,    θ(t) = 2π · turns · t,    r0 = 0.1,

    for ``t`` evenly spaced on ``[0, 1]`` (ends included): the radius grows linearly with the
    angle from 0.1 to 1 over ``turns`` turns. Class 1 is its point reflection ``x -> -x``
    (the same arm turned by π), so the two arms interleave, ``(1 - r0) / (2 turns)`` apart
    radially. Then Gaussian noise of standard deviation ``noise`` on each coordinate.

    K. J. Lang and M. J. Witbrock, "Learning to tell two spirals apart", Proceedings of the
    1988 Connectionist Models Summer School, pp. 52-59: 97 points per arm over 3 turns, radius
    0.5 to 6.5. ``spirals(194, noise=0, turns=3)`` is that set up to scale, the innermost radius
    0.1 of the outermost instead of 1/13, and the first angle.

    Args:
        n: number of points, ``>= 4``; class 0 gets ``n // 2``, class 1 the rest.
        noise: standard deviation of the Gaussian noise.
        turns: number of turns of each arm, ``> 0``.
        seed: seeds ``np.random.default_rng``.

    Returns:
        A :class:`Dataset` with ``x`` ``float32 [n, 2]``, ``y`` ``int32 [n]``, rows shuffled.
    """
    n, rng = _synthetic_args("spirals", n, seed)
    noise = _noise(noise, "spirals")
    turns = _finite(turns, "turns", "spirals")
    if turns <= 0:
        raise ValueError(f"spirals: turns (of each arm) must be > 0, got {turns!r}.")

    def arm(m: int) -> np.ndarray:
        t = np.linspace(0.0, 1.0, m)
        r, theta = _SPIRAL_R0 + (1 - _SPIRAL_R0) * t, 2 * np.pi * turns * t
        return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)

    return _finish(arm(n // 2), -arm(n - n // 2), noise, rng)


SYNTHETIC: dict[str, Callable[..., Dataset]] = {
    "xor": xor,
    "moons": moons,
    "circles": circles,
    "spirals": spirals,
}
"""The synthetic generators by name; each is ``f(n=400, *, noise, seed=0, ...) -> Dataset``."""
