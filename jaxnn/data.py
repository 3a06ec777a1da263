"""Data sets: four synthetic 2-D problems, scikit-learn's digits, MNIST and Fashion-MNIST.

Host-side NumPy only: nothing here imports JAX, and nothing is downloaded. MNIST and
Fashion-MNIST are read from files the user has put in a folder (:func:`mnist`); digits ships
with scikit-learn (:func:`digits`).

Conventions, for every data set:

* :class:`Dataset` ``x`` is ``float32 [n, features]``, ``y`` is ``int32 [n]`` of class indices
  in ``[0, num_classes)``.
* :class:`Splits` holds train, validation and test parts, each a stratified subset (every class
  in the same proportions, to within one example), in the order of the source data.
* Standardisation (:func:`standardize`) uses the statistics of the *training* part only, so
  nothing about the validation and test examples leaks into the inputs.
* Everything random is drawn from ``np.random.default_rng`` seeded by ``seed``: the same
  arguments give the same arrays.

:func:`load` maps the names in :data:`DATASETS` (for the command line) to
:class:`Splits`. Bad arguments and bad files raise at once, with messages that say what was
expected, what came and what to do; a malformed file raises :class:`DataFormatError` (a
``ValueError``) naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "SYNTHETIC",
    "DataFormatError",
    "Dataset",
    "Splits",
    "circles",
    "digits",
    "load",
    "load_idx",
    "load_npz",
    "mnist",
    "moons",
    "spirals",
    "split",
    "standardize",
    "xor",
]


class Dataset(NamedTuple):
    """Examples and their class labels."""

    x: np.ndarray  # float32 [n, features]
    y: np.ndarray  # int32 [n], class indices in [0, num_classes)


class Splits(NamedTuple):
    """A data set divided into disjoint train, validation and test parts."""

    train: Dataset
    validation: Dataset
    test: Dataset
    num_classes: int
    name: str


class DataFormatError(ValueError):
    """A data file that is not what it should be: wrong magic number, truncated, corrupt."""


# --------------------------------------------------------------------------------------------
# Argument checks


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


# --------------------------------------------------------------------------------------------
# Synthetic two-class problems in the plane


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


# --------------------------------------------------------------------------------------------
# Stratified splits


def _check_dataset(data: object, who: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, Dataset):
        raise TypeError(f"{who}: expected a jaxnn.data.Dataset(x, y), got {type(data).__name__}.")
    x, y = np.asarray(data.x), np.asarray(data.y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"{who}: expected x of shape [n, features] and y of shape [n], got x.shape="
            f"{x.shape} and y.shape={y.shape}. Flatten images with x.reshape(len(x), -1)."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(
            f"{who}: y must hold integer class indices, got dtype {y.dtype}. For one-hot rows "
            f"pass y.argmax(-1)."
        )
    return x, y


def _apportion(counts: Sequence[int], shares: Sequence[Fraction]) -> np.ndarray:
    """Round the table ``shares[p] · counts[c]`` to integers, keeping every margin.

    Returns an ``int [classes, parts]`` table whose row ``c`` sums to ``counts[c]``, whose cell
    ``(c, p)`` is the floor or the ceiling of ``shares[p] · counts[c]``, and whose column ``p``
    sums to the floor or the ceiling of ``shares[p] · sum(counts)``. Such a rounding always
    exists (Bacharach, "Matrix rounding problems", Management Science 12(9), 1966): after the
    floors, the fractional parts are a flow from classes to parts of integer row totals, and a
    flow problem with integer capacities has an integer maximum flow (Ford & Fulkerson 1956).
    It is found by augmenting paths, first up to each column's floor and then up to its
    ceiling, so that no column ends below its floor. ``shares`` must sum to 1 exactly.
    """
    counts = [int(c) for c in counts]
    exact = [[s * c for s in shares] for c in counts]
    table = np.array([[math.floor(q) for q in row] for row in exact], dtype=np.int64)
    open_ = np.array([[q != math.floor(q) for q in row] for row in exact], dtype=bool)
    supply = np.array(counts) - table.sum(1)  # units each class still has to place
    totals = [s * sum(counts) for s in shares]
    room = np.array([math.floor(t) for t in totals]) - table.sum(0)
    extra = np.zeros(open_.shape, dtype=bool)  # the +1 of cells rounded up

    def augment() -> bool:
        # Breadth first from the classes with supply left, along class -> part edges not yet
        # used and part -> class edges already used, to a part with room.
        came_to_part: dict[int, int] = {}
        came_to_class: dict[int, int | None] = {c: None for c in np.flatnonzero(supply > 0)}
        frontier = list(came_to_class)
        while frontier:
            reached = []
            for c in frontier:
                for p in np.flatnonzero(open_[c] & ~extra[c]):
                    if p in came_to_part:
                        continue
                    came_to_part[p] = c
                    if room[p] > 0:
                        room[p] -= 1
                        while True:
                            c = came_to_part[p]
                            extra[c, p] = True
                            back = came_to_class[c]
                            if back is None:
                                supply[c] -= 1
                                return True
                            extra[c, back] = False
                            p = back
                    for c2 in np.flatnonzero(extra[:, p]):
                        if c2 not in came_to_class:
                            came_to_class[c2] = p
                            reached.append(c2)
            frontier = reached
        return False

    while augment():
        pass
    room += np.array([t != math.floor(t) for t in totals])
    while augment():
        pass
    if supply.any():  # excluded by the integrality theorem
        raise AssertionError(f"controlled rounding failed for counts {counts}, shares {shares}")
    return table + extra


def _stratified(
    y: np.ndarray, num_classes: int, shares: Sequence[Fraction], seed: int
) -> list[np.ndarray]:
    """Indices of the parts, each class divided by :func:`_apportion`, each part sorted."""
    # A stream of its own: split(xor(seed=s), seed=s) must not reuse the generator's numbers.
    rng = np.random.default_rng([seed, 0x5711])
    table = _apportion(np.bincount(y, minlength=num_classes), shares)
    parts: list[list[np.ndarray]] = [[] for _ in shares]
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(y == c))
        for p, chunk in enumerate(np.split(members, np.cumsum(table[c])[:-1])):
            parts[p].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def split(
    data: Dataset,
    *,
    validation: float = 0.2,
    test: float = 0.2,
    seed: int = 0,
    name: str = "data",
    num_classes: int | None = None,
) -> Splits:
    """Divide ``data`` into stratified train, validation and test parts.

    Every class is divided in the same proportions: a class of ``n_c`` examples gives the
    validation part ``validation · n_c`` examples rounded up or down, the test part
    ``test · n_c`` rounded up or down, and the training part the rest (``(1 - validation -
    test) · n_c``, also rounded up or down); and each part's size is its fraction of ``n``
    rounded up or down. (Rounding each class separately could put the totals off by one per
    class; the rounding here keeps both, see :func:`_apportion`.) Which examples of a class go
    where is a seeded random permutation; each part keeps the order of ``data``. Fractions are
    taken as the decimals they print as (``0.2`` is 1/5), so ``0.2 · 5`` is exactly 1.

    Args:
        data: the examples, ``x`` ``[n, features]``, ``y`` ``int [n]``.
        validation: fraction of each class for the validation part, in ``(0, 1)``.
        test: fraction of each class for the test part, in ``(0, 1)``; ``validation + test``
            must be ``< 1``.
        seed: seeds the permutations (a generator of its own, independent of any that made
            ``data`` with the same seed).
        name: the data set's name, kept in the result.
        num_classes: the number of classes; ``y.max() + 1`` when ``None``.

    Returns:
        :class:`Splits` of three disjoint parts whose union is ``data``.

    Raises:
        ValueError: fractions out of range, labels outside ``[0, num_classes)``, or a part
            that would be empty (too little data for the fractions).
    """
    x, y = _check_dataset(data, "split")
    if len(y) == 0:
        raise ValueError("split: data is empty (n = 0); there is nothing to split.")
    shares = []
    for what, frac in (("validation", validation), ("test", test)):
        v = _finite(frac, what, "split")
        if not 0 < v < 1:
            raise ValueError(
                f"split: {what} is the fraction of each class in the {what} part and must lie "
                f"in (0, 1), got {frac!r}."
            )
        shares.append(Fraction(str(v)))
    if shares[0] + shares[1] >= 1:
        raise ValueError(
            f"split: validation + test must be < 1 to leave examples for training, got "
            f"{validation!r} + {test!r}."
        )
    if num_classes is None:
        num_classes = int(y.max()) + 1
    num_classes = _int(num_classes, "num_classes", "split", 1, "labels are in [0, num_classes)")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"split: labels must lie in [0, {num_classes}) (num_classes={num_classes}), got "
            f"{y[i]} at index {i}."
        )
    seed = _seed(seed, "split")
    train, val, tst = _stratified(y, num_classes, [1 - sum(shares), *shares], seed)
    for part, idx, frac in (
        ("train", train, None),
        ("validation", val, validation),
        ("test", tst, test),
    ):
        if len(idx) == 0:
            asked = f"{part}={frac!r} of" if frac is not None else "the rest of"
            raise ValueError(
                f"split: the {part} part of {name!r} would be empty ({asked} n={len(y)} "
                f"examples). Use more data or a larger fraction."
            )
    return Splits(
        Dataset(x[train], y[train]),
        Dataset(x[val], y[val]),
        Dataset(x[tst], y[tst]),
        num_classes,
        name,
    )


# --------------------------------------------------------------------------------------------
# Standardisation

_CHUNK = 8192  # rows per float64 block: MNIST's 50000 x 784 never exists in float64 at once


def standardize(splits: Splits) -> Splits:
    """Standardise every feature with the training part's mean and standard deviation.

    ``x -> (x - mean_train) / std_train`` per feature, on all three parts, the statistics
    computed in float64 over the training part alone (``std`` the population one, ``ddof=0``)
    and the result rounded once to float32. The validation and test parts are not looked at:
    their features are then only approximately zero-mean and unit-variance, as new data would
    be.

    A feature that is constant on the training part (minimum equal to maximum, e.g. the
    digits' and MNIST's always-blank corner pixels) has no scale to divide by: it gets
    ``std = 1``, i.e. it is only centred, so it is exactly 0 in training and keeps its original
    units elsewhere (pixels scaled to ``[0, 1]`` first stay within ±1 there). A feature that is
    non-zero in only a few training examples is standardised like any other, and those
    examples get values up to ``sqrt(n_train - 1)`` in magnitude.

    Args:
        splits: the parts, ``x`` of each ``[n, features]`` with the same number of features.

    Returns:
        The same :class:`Splits` with float32 ``x`` standardised; labels unchanged.

    Raises:
        ValueError: an empty training part, differing feature counts, or a non-finite value in
            the training features.
    """
    if not isinstance(splits, Splits):
        raise TypeError(f"standardize: expected jaxnn.data.Splits, got {type(splits).__name__}.")
    parts = [
        _check_dataset(d, f"standardize ({w})")
        for d, w in zip(splits[:3], ("train", "validation", "test"), strict=True)
    ]
    x = parts[0][0]
    if len(x) == 0:
        raise ValueError("standardize: the training part is empty; there are no statistics.")
    widths = [p[0].shape[1] for p in parts]
    if len(set(widths)) != 1:
        raise ValueError(
            f"standardize: the parts must have the same number of features, got train, "
            f"validation, test widths {widths}."
        )
    lo, hi = x.min(0), x.max(0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        j = int(np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))[0])
        raise ValueError(
            f"standardize: training feature {j} holds a non-finite value (NaN or inf); clean "
            f"or drop it before standardising."
        )
    rows = range(0, len(x), _CHUNK)
    mean = sum(x[i : i + _CHUNK].sum(0, dtype=np.float64) for i in rows) / len(x)
    sq = sum(((x[i : i + _CHUNK] - mean) ** 2).sum(0) for i in rows)
    std = np.sqrt(sq / len(x))
    constant = lo == hi
    # The mean of a constant feature is its value, exactly (a float64 sum may not give it).
    mean = np.where(constant, lo.astype(np.float64), mean)
    std = np.where(constant, 1.0, std)

    def apply(d: Dataset) -> Dataset:
        out = np.empty(d.x.shape, dtype=np.float32)
        for i in range(0, len(d.x), _CHUNK):
            out[i : i + _CHUNK] = (d.x[i : i + _CHUNK].astype(np.float64) - mean) / std
        return Dataset(out, d.y)

    return splits._replace(
        train=apply(splits.train), validation=apply(splits.validation), test=apply(splits.test)
    )


# --------------------------------------------------------------------------------------------
# Digits


def digits(*, seed: int = 0) -> Splits:
    """The 1797 8x8 handwritten digits bundled with scikit-learn, 60/20/20, standardised.

    ``sklearn.datasets.load_digits``: the test part of the UCI "Optical Recognition of
    Handwritten Digits" set (Alpaydin & Kaynak 1998), 8x8 images of counts 0..16 flattened to
    64 features, 10 classes of 174 to 183 images. Pixels are divided by 16; the set is split
    by :func:`split` into 60 % train (1079 images), 20 % validation (359) and 20 % test (359),
    stratified; and the parts are standardised by :func:`standardize` with the training
    statistics. 60/20/20 leaves two evaluation parts of about 360 examples, each enough to
    measure an accuracy near 95 % to about ±1 % (one standard error), while training keeps
    60 % of a small set.

    Dividing by 16 does not change the standardised features that vary in training; it bounds
    those that do not (the always-blank pixels 0 and 32, and any other blank in every training
    image) to ``[-1, 1]`` on the validation and test parts. Pixels that are rarely inked get
    large standardised values where they are inked (up to about 46 in the validation part for
    ``seed=0``): per-feature standardisation divides by their small training spread.

    Args:
        seed: seeds the split.

    Returns:
        :class:`Splits` named ``"digits"``, ``num_classes=10``, ``x`` ``float32 [n, 64]``.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    seed = _seed(seed, "digits")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "jaxnn.data.digits needs scikit-learn, which ships the digits with it (nothing is "
            "downloaded): pip install scikit-learn (or jaxnn[experiments])."
        ) from e
    raw = load_digits()
    data = Dataset((raw.data / 16).astype(np.float32), raw.target.astype(np.int32))
    return standardize(
        split(data, validation=0.2, test=0.2, seed=seed, name="digits", num_classes=10)
    )


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST from local files

# IDX type codes (LeCun et al., http://yann.lecun.com/exdb/mnist/): big-endian data.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_NAMES = "0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64"
_GZIP_MAGIC = b"\x1f\x8b"
# What a file that is not IDX most often is, by its first bytes, and what to do about it.
_OTHER_FORMATS = (
    (b"PK\x03\x04", "a zip archive: unzip it and pass the IDX file inside"),
    (b"BZh", "bzip2-compressed: decompress it (bunzip2) first"),
    (b"\xfd7zXZ\x00", "xz-compressed: decompress it (xz -d) first"),
    (b"version https://git-lfs", "a Git LFS pointer, not the data: run git lfs pull"),
    (b"<", "an HTML or XML page (a download link's error page?): download the file itself"),
)


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, the format of LeCun's MNIST files (and Fashion-MNIST's).

    Layout: a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian uint32
    sizes, then the data in C order, big-endian, of the type: ``0x08`` uint8, ``0x09`` int8,
    ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64
    (http://yann.lecun.com/exdb/mnist/). A gzip-compressed file (first bytes ``1f 8b``) is
    decompressed first; whether it is gzip is read from those bytes, not the name, so a
    ``.gz`` file a browser has already decompressed reads as well.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte`` or ``train-images-idx3-ubyte.gz``.

    Returns:
        The array, of the file's shape and type, in native byte order.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: an empty file, a wrong magic number (saying what the file is when
            its first bytes tell: zip, bzip2, xz, HTML, a Git LFS pointer), an unknown type
            code, a truncated header or data, trailing bytes, or corrupt gzip data; the message
            names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file. Expected an IDX file such as MNIST's "
            f"train-images-idx3-ubyte (optionally gzipped, .gz)."
        ) from None
    gzipped = raw[:2] == _GZIP_MAGIC
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataFormatError(
                f"{path}: corrupt gzip data ({type(e).__name__}: {e}). The download was cut "
                f"short or damaged: download the file again."
            ) from e
    if not raw:
        raise DataFormatError(
            f"{path}: the file is empty (0 bytes{' once decompressed' if gzipped else ''}): the "
            f"download failed or was cut short. Download the file again."
        )
    if len(raw) < 4:
        raise DataFormatError(
            f"{path}: truncated: {len(raw)} bytes, fewer than the 4 of an IDX magic number. "
            f"Download the file again."
        )
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        what = next((w for magic, w in _OTHER_FORMATS if raw.startswith(magic)), None)
        named_gz = (
            " (its name ends in .gz, but it is not gzip data)"
            if (path.suffix == ".gz" and not gzipped)
            else ""
        )
        raise DataFormatError(
            f"{path}: not an IDX file{named_gz}: its first 4 bytes are {raw[:4].hex(' ')}, "
            f"expected an IDX magic number 00 00 <type> <ndim> (00 00 08 03 for MNIST images, "
            f"00 00 08 01 for labels) or gzip's 1f 8b. "
            + (
                f"It is {what}."
                if what
                else "An HTML page or a Git LFS pointer saved under this name would do this: "
                "download the file itself."
            )
        )
    if code not in _IDX_TYPES:
        raise DataFormatError(
            f"{path}: unknown IDX type code 0x{code:02X} in the magic number "
            f"{raw[:4].hex(' ')}; known codes: {_IDX_NAMES}."
        )
    dtype = _IDX_TYPES[code]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(
            f"{path}: truncated header: {ndim} dimensions need {header} bytes, found {len(raw)}."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else f"{found - expected} trailing bytes"
        raise DataFormatError(
            f"{path}: {what}: expected {expected} bytes of data for shape {shape} of "
            f"{dtype.itemsize}-byte {dtype.newbyteorder('=').name}, found {found}. "
            + (
                "Download the file again."
                if found < expected
                else "The header does not describe the file."
            )
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def load_npz(path: str | os.PathLike, keys: Sequence[str] = _NPZ_KEYS) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` from an ``.npz`` archive (``np.savez``'s format, no pickles).

    The default keys are those of the ``mnist.npz`` and ``fashion_mnist.npz`` that
    ``keras.datasets`` downloads: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Args:
        path: the archive.
        keys: the arrays to read; others in the archive are ignored.

    Returns:
        ``{key: array}`` for each of ``keys``.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: not an ``.npz`` archive (not a zip, a single ``.npy`` array, a
            damaged zip, pickled objects), or a key missing; the message names the file.
    """
    path = Path(path)
    expected = f"an .npz archive with the arrays {', '.join(keys)}"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Expected {expected}.")
    # np.load is given an open file: on a damaged zip it raises without closing a file it
    # opened itself (numpy 2.4).
    with path.open("rb") as f:
        try:
            archive = np.load(f, allow_pickle=False)
        except _NPZ_ERRORS as e:
            raise DataFormatError(
                f"{path}: not a readable .npz archive ({type(e).__name__}: {e}). Expected "
                f"{expected}, as np.savez writes it."
            ) from e
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataFormatError(
                f"{path}: holds a single array (.npy format, shape {np.shape(archive)}); "
                f"expected {expected}."
            )
        with archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataFormatError(
                    f"{path}: missing key(s) {', '.join(missing)}: the archive holds "
                    f"{', '.join(archive.files) or 'nothing'}; expected {expected}."
                )
            try:
                return {k: archive[k] for k in keys}
            except _NPZ_ERRORS as e:
                raise DataFormatError(
                    f"{path}: cannot read its arrays ({type(e).__name__}: {e}); the archive is "
                    f"damaged or holds pickled objects. Expected {expected}."
                ) from e


_MNIST_KINDS = ("mnist", "fashion_mnist")
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _mnist_expected(kind: str) -> str:
    return (
        f"the four IDX files {', '.join(_MNIST_FILES)} (each optionally gzipped, .gz), or "
        f"{kind}.npz with the arrays x_train, y_train, x_test, y_test (as keras.datasets ships "
        f"it)"
    )


_MNIST_SHAPE = (28, 28)  # rows, cols of every MNIST and Fashion-MNIST image
_MNIST_CLASSES = 10
_IDX_FIX = "Download the original files again."
_NPZ_FIX = (
    "Save the arrays as keras.datasets ships them: x_train, x_test uint8 [n, 28, 28] (pixels "
    "0..255), y_train, y_test uint8 [n] (classes 0..9), e.g. with y.astype(np.uint8)."
)


def _check_mnist_part(
    images: np.ndarray, labels: np.ndarray, src_x: str, src_y: str, fix: str
) -> None:
    """Refuse a part (train or test) that is not MNIST's or Fashion-MNIST's, naming the file.

    Both data sets have uint8 28x28 images and uint8 labels of 10 classes, and each of their
    training and test files holds every class (the test files at least 892 of each): a file
    with fewer classes, or no examples, is another data set's, or one cut down.
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        hint = " (a labels file under an images file's name?)" if images.ndim == 1 else ""
        raise DataFormatError(
            f"{src_x}: expected images as uint8 [n, 28, 28], got {images.dtype} of shape "
            f"{images.shape}{hint}. {fix}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        hint = " (an images file under a labels file's name?)" if labels.ndim == 3 else ""
        raise DataFormatError(
            f"{src_y}: expected labels as uint8 [n], got {labels.dtype} of shape "
            f"{labels.shape}{hint}. {fix}"
        )
    if images.shape[1:] != _MNIST_SHAPE:
        raise DataFormatError(
            f"{src_x}: holds {images.shape[1]}x{images.shape[2]} images; MNIST's and "
            f"Fashion-MNIST's are 28x28 (784 features), so this is another data set's file. "
            f"{fix}"
        )
    for src, array, what in ((src_x, images, "images"), (src_y, labels, "labels")):
        if len(array) == 0:
            raise DataFormatError(
                f"{src}: holds 0 {what} (shape {array.shape}); every MNIST and Fashion-MNIST "
                f"file holds at least 10000, so it was written empty or cut down. {fix}"
            )
    if len(images) != len(labels):
        raise DataFormatError(
            f"{src_x} holds {len(images)} images but {src_y} holds {len(labels)} labels; the "
            f"two must come from the same part of the same data set."
        )
    if (bad := labels >= _MNIST_CLASSES).any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            f"{src_y}: labels must lie in 0..9, found {labels[i]} at index {i}. Is this a "
            f"labels file of MNIST or Fashion-MNIST? {fix}"
        )
    present = np.flatnonzero(np.bincount(labels, minlength=_MNIST_CLASSES))
    if len(present) < _MNIST_CLASSES:
        missing = sorted(set(range(_MNIST_CLASSES)) - set(present.tolist()))
        raise DataFormatError(
            f"{src_y}: its {len(labels)} labels hold {len(present)} of the 10 classes, "
            f"{present.tolist()} (missing: {missing}); MNIST and Fashion-MNIST have 10 classes, "
            f"each in every training and test file, so this is a wrong or truncated file (one "
            f"cut down to a subset of the examples). {fix}"
        )


def mnist(
    data_dir: str | os.PathLike, *, kind: str = "mnist", validation: int = 10000, seed: int = 0
) -> Splits:
    """MNIST or Fashion-MNIST from files in ``data_dir``: train, validation and test parts.

    ``data_dir`` must hold either the four IDX files of the distribution,
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``); or ``mnist.npz``
    (``fashion_mnist.npz``) with ``x_train``, ``y_train``, ``x_test``, ``y_test``, as
    ``keras.datasets`` ships it. Nothing is downloaded. MNIST: LeCun, Bottou, Bengio & Haffner,
    "Gradient-based learning applied to document recognition", Proc. IEEE 86(11), 1998.
    Fashion-MNIST (same names, shapes and format): Xiao, Rasul & Vollgraf, arXiv:1708.07747,
    2017.

    The validation part is ``validation`` examples of the training file, stratified (each
    digit in its proportion of the training file, to within one example) and seeded; the rest
    of the training file is the training part; the ``t10k`` file is the test part. Pixels are
    divided by 255, the images flattened to ``rows * cols`` features, and the parts
    standardised by :func:`standardize` with the training part's statistics.

    Args:
        data_dir: the folder holding the files.
        kind: ``"mnist"`` or ``"fashion_mnist"``; the name of the ``.npz`` and of the result.
        validation: number of training-file examples held out, ``1 <= validation < n_train``.
        seed: seeds the choice of the validation examples.

    Returns:
        :class:`Splits` with ``num_classes=10``, ``x`` ``float32 [n, 784]`` (28x28 pixels).

    Raises:
        FileNotFoundError: ``data_dir`` is not a folder or holds neither form of the files.
        DataFormatError: a malformed file, images that are not uint8 ``[n, 28, 28]``, labels
            that are not uint8 ``[n]`` in 0..9, a file of 0 images or labels, counts that
            disagree, or a labels file without all ten classes; the message names the file.
    """
    if kind not in _MNIST_KINDS:
        raise ValueError(f"mnist: unknown kind {kind!r}. Known kinds: {', '.join(_MNIST_KINDS)}.")
    validation = _int(validation, "validation", "mnist", 1, "the validation part can't be empty")
    seed = _seed(seed, "mnist")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"mnist: data_dir {str(folder)!r} is not a folder. It must hold "
            f"{_mnist_expected(kind)}."
        )
    found = [
        next((p for p in (folder / f, folder / f"{f}.gz") if p.is_file()), None)
        for f in _MNIST_FILES
    ]
    npz = folder / f"{kind}.npz"
    if all(p is not None for p in found):
        arrays = [load_idx(p) for p in found]
        sources = [str(p) for p in found]
        fix = _IDX_FIX
    elif npz.is_file():
        arrays = list(load_npz(npz).values())
        sources = [f"{npz}[{k!r}]" for k in _NPZ_KEYS]
        fix = _NPZ_FIX
    else:
        missing = [f for f, p in zip(_MNIST_FILES, found, strict=True) if p is None]
        raise FileNotFoundError(
            f"mnist: {str(folder)!r} holds neither {kind}.npz nor all four IDX files (missing: "
            f"{', '.join(missing)}). Expected {_mnist_expected(kind)}. Download them once and "
            f"pass their folder (--data-dir); torchvision keeps them in <root>/MNIST/raw or "
            f"<root>/FashionMNIST/raw."
        )
    train_x, train_y, test_x, test_y = arrays
    _check_mnist_part(train_x, train_y, sources[0], sources[1], fix)
    _check_mnist_part(test_x, test_y, sources[2], sources[3], fix)
    n = len(train_y)
    if validation >= n:
        raise ValueError(
            f"mnist: validation={validation} must be less than the {n} examples of the training "
            f"file, to leave some for training."
        )
    train, val = _stratified(
        train_y, 10, [Fraction(n - validation, n), Fraction(validation, n)], seed
    )

    def part(images: np.ndarray, labels: np.ndarray) -> Dataset:
        x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
        return Dataset(x, labels.astype(np.int32))

    return standardize(
        Splits(
            part(train_x[train], train_y[train]),
            part(train_x[val], train_y[val]),
            part(test_x, test_y),
            10,
            kind,
        )
    )


# --------------------------------------------------------------------------------------------
# By name

DATASETS: tuple[str, ...] = (*SYNTHETIC, "digits", *_MNIST_KINDS)
"""The names :func:`load` accepts."""


def load(name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0) -> Splits:
    """The data set ``name`` as :class:`Splits`, for the command line.

    * ``"xor"``, ``"moons"``, ``"circles"``, ``"spirals"``: 400 points of the generator of that
      name with its default noise, split 60/20/20 by :func:`split`, stratified, not
      standardised (the coordinates are already of order 1).
    * ``"digits"``: :func:`digits`.
    * ``"mnist"``, ``"fashion_mnist"``: :func:`mnist` on ``data_dir``, which is then required.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the folder of the MNIST or Fashion-MNIST files; ignored by the others.
        seed: seeds the generator and the split.

    Raises:
        ValueError: an unknown name, or MNIST without ``data_dir``.
    """
    if name in SYNTHETIC:
        data = SYNTHETIC[name](seed=seed)
        return split(data, validation=0.2, test=0.2, seed=seed, name=name, num_classes=2)
    if name == "digits":
        return digits(seed=seed)
    if name in _MNIST_KINDS:
        if data_dir is None:
            raise ValueError(
                f"data set {name!r} is read from local files and needs a folder: pass "
                f"data_dir (--data-dir on the command line) holding {_mnist_expected(name)}."
            )
        return mnist(data_dir, kind=name, seed=seed)
    raise ValueError(f"unknown data set {name!r}. Known data sets: {', '.join(DATASETS)}.")
