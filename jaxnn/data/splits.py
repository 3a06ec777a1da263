"""Stratified train/validation/test splits, and standardisation with the training statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from jaxnn.data._arguments import _finite, _int, _seed
from jaxnn.data.synthetic import Dataset

__all__ = ["Splits", "split", "standardize"]


class Splits(NamedTuple):
    """A data set divided into disjoint train, validation and test parts."""

    train: Dataset
    validation: Dataset
    test: Dataset
    num_classes: int
    name: str


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


_CHUNK = 8192  # rows per float64 block: MNIST's 50000 x 784 never exists in float64 at once


def standardize(splits: Splits, *, per: str = "feature") -> Splits:
    """Standardise every feature with the training part's mean and standard deviation.

    ``per="all"`` takes one mean and one standard deviation over every value of the training
    part instead (images as a whole, as ``torchvision.transforms.Normalize`` with MNIST's
    ``0.1307, 0.3081`` does): pixels keep their relative contrast, which a convolution, whose
    kernel slides over every position, needs. Everything below holds with the one feature
    that all the values then form.

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
        per: ``"feature"`` (default) or ``"all"``.

    Returns:
        The same :class:`Splits` with float32 ``x`` standardised; labels unchanged.

    Raises:
        ValueError: an empty training part, differing feature counts, or a non-finite value in
            the training features; ``per`` not one of ``"feature"``, ``"all"``.
    """
    if not isinstance(splits, Splits):
        raise TypeError(f"standardize: expected jaxnn.data.Splits, got {type(splits).__name__}.")
    if per not in ("feature", "all"):
        raise ValueError(f"standardize: per must be 'feature' or 'all', got {per!r}.")
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
    if per == "all":
        x = x.reshape(-1, 1)
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
