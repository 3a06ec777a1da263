"""Tests of jaxnn.data: the synthetic sets' shapes, splits, standardisation, digits, IDX, MNIST."""

from __future__ import annotations

import gzip
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxnn import data
from jaxnn.data import DataFormatError, Dataset, Splits

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def rows_sorted(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` in lexicographic order: compares point sets regardless of order."""
    return x[np.lexsort(x.T[::-1])]


# --------------------------------------------------------------------------------------------
# Synthetic sets


@pytest.mark.parametrize("name", sorted(data.SYNTHETIC))
@pytest.mark.parametrize("n", [400, 7, 4])
def test_synthetic_shapes_dtypes_balance(name, n):
    d = data.SYNTHETIC[name](n)
    assert isinstance(d, Dataset)
    assert d.x.shape == (n, 2) and d.x.dtype == np.float32
    assert d.y.shape == (n,) and d.y.dtype == np.int32
    assert np.isfinite(d.x).all()
    np.testing.assert_array_equal(np.bincount(d.y, minlength=2), [n // 2, n - n // 2])


@pytest.mark.parametrize("name", sorted(data.SYNTHETIC))
def test_synthetic_seeded(name):
    make = data.SYNTHETIC[name]
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)
    # The rows are shuffled: not all of class 0 first.
    assert not np.array_equal(a.y, np.sort(a.y))
    # The noise scale changes the noise, not the shuffle.
    np.testing.assert_array_equal(make(seed=3, noise=0.3).y, a.y)


def test_xor_sign_rule_and_not_linearly_separable():
    d = data.xor(400, noise=0.0)
    np.testing.assert_array_equal(np.abs(d.x), 1.0)  # the four corners (±1, ±1)
    np.testing.assert_array_equal(d.y, np.sign(d.x[:, 0]) != np.sign(d.x[:, 1]))
    # Both classes have their mean at the origin: a point of both convex hulls, so no line
    # separates them (a separating line would put each class mean strictly on its own side).
    for c in (0, 1):
        np.testing.assert_array_equal(d.x[d.y == c].mean(0), [0.0, 0.0])
    # With noise, a point keeps its blob's label: the sign rule holds for most points only.
    noisy = data.xor(400, noise=0.1)
    agree = np.mean(noisy.y == (np.sign(noisy.x[:, 0]) != np.sign(noisy.x[:, 1])))
    assert 0.99 <= agree <= 1.0


def test_moons_on_the_half_circles():
    d = data.moons(200, noise=0.0)
    x0, x1 = d.x[d.y == 0].astype(np.float64), d.x[d.y == 1].astype(np.float64)
    # One float32 rounding of coordinates of magnitude <= 2: the squared radius is off by at
    # most 4 eps32.
    np.testing.assert_allclose((x0**2).sum(1), 1.0, rtol=0, atol=4 * EPS32)
    assert (x0[:, 1] >= 0).all()
    np.testing.assert_allclose(((x1 - [1.0, 0.5]) ** 2).sum(1), 1.0, rtol=0, atol=4 * EPS32)
    assert (x1[:, 1] <= 0.5).all()
    # The same points as scikit-learn's definition.
    sklearn = pytest.importorskip("sklearn.datasets")
    ref, ref_y = sklearn.make_moons(200, shuffle=False, noise=0.0)
    for c in (0, 1):
        np.testing.assert_array_equal(
            rows_sorted(d.x[d.y == c]), rows_sorted(ref[ref_y == c].astype(np.float32))
        )


@pytest.mark.parametrize("factor", [0.5, 0.8])
def test_circles_radii(factor):
    d = data.circles(201, noise=0.0, factor=factor)
    r = np.hypot(*d.x.astype(np.float64).T)
    np.testing.assert_allclose(r[d.y == 0], 1.0, rtol=2 * EPS32)
    np.testing.assert_allclose(r[d.y == 1], factor, rtol=2 * EPS32)
    sklearn = pytest.importorskip("sklearn.datasets")
    ref, ref_y = sklearn.make_circles(201, shuffle=False, noise=0.0, factor=factor)
    for c in (0, 1):
        np.testing.assert_array_equal(
            rows_sorted(d.x[d.y == c]), rows_sorted(ref[ref_y == c].astype(np.float32))
        )


@pytest.mark.parametrize("turns", [1.5, 3.0])
def test_spirals_radius_grows_with_angle_and_arms_are_reflections(turns):
    n = 400
    d = data.spirals(n, noise=0.0, turns=turns)
    arm0, arm1 = d.x[d.y == 0], d.x[d.y == 1]
    np.testing.assert_array_equal(rows_sorted(-arm1), rows_sorted(arm0))
    p = arm0.astype(np.float64)
    r = np.hypot(*p.T)
    order = np.argsort(r)
    r = r[order]
    theta = np.unwrap(np.arctan2(p[order, 1], p[order, 0]))
    assert (np.diff(r) > 0).all() and (np.diff(theta) > 0).all()
    np.testing.assert_allclose(theta[-1] - theta[0], 2 * np.pi * turns, rtol=1e-6)
    # r = r0 + (1 - r0) θ / (2π turns): linear in the angle, from 0.1 to 1.
    np.testing.assert_allclose([r[0], r[-1]], [0.1, 1.0], rtol=1e-6)
    np.testing.assert_allclose(r, 0.1 + 0.9 * (theta - theta[0]) / (2 * np.pi * turns), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 3}, ValueError, r"n must be >= 4 \(at least two examples of each"),
        ({"n": 4.0}, TypeError, "n must be an int, got float"),
        ({"n": True}, TypeError, "n must be an int, got bool"),
        ({"noise": -0.1}, ValueError, "noise is the standard deviation .* must be >= 0"),
        ({"noise": float("nan")}, ValueError, "noise must be finite"),
        ({"noise": "0.1"}, TypeError, "noise must be a number, got str"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
@pytest.mark.parametrize("name", sorted(data.SYNTHETIC))
def test_synthetic_bad_arguments(name, kwargs, error, match):
    with pytest.raises(error, match=f"{name}: {match}"):
        data.SYNTHETIC[name](**kwargs)


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (data.circles, {"factor": 1.0}, r"circles: factor .* must lie in \[0, 1\), got 1.0"),
        (data.circles, {"factor": -0.5}, r"must lie in \[0, 1\)"),
        (data.spirals, {"turns": 0}, r"spirals: turns \(of each arm\) must be > 0, got 0"),
        (data.spirals, {"turns": float("inf")}, "spirals: turns must be finite"),
    ],
)
def test_shape_parameters_validated(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


# --------------------------------------------------------------------------------------------
# split


def labelled(counts: list[int], seed: int = 0) -> Dataset:
    """Classes of the given sizes in a shuffled order; x[:, 0] is each example's index."""
    y = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))
    x = np.stack([np.arange(len(y)), y], 1).astype(np.float32)
    return Dataset(x, y.astype(np.int32))


def check_split(d: Dataset, s: Splits, validation: float, test: float) -> None:
    """Stratified to within one example per class and overall; disjoint; the whole; in order."""
    shares = {"train": 1 - validation - test, "validation": validation, "test": test}
    ids = []
    for (part, share), p in zip(shares.items(), s[:3], strict=True):
        assert p.x.dtype == d.x.dtype and p.y.dtype == d.y.dtype
        id_ = p.x[:, 0].astype(int)
        np.testing.assert_array_equal(p.y, d.y[id_])
        assert (np.diff(id_) > 0).all(), f"{part} is not in the order of the data"
        got = np.bincount(p.y, minlength=s.num_classes)
        exact = share * np.bincount(d.y, minlength=s.num_classes)
        assert (np.abs(got - exact) < 1 + 1e-9).all(), (part, got, exact)
        assert abs(len(p.y) - share * len(d.y)) < 1 + 1e-9, (part, len(p.y))
        ids.append(id_)
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(len(d.y)))


def test_split_stratified_disjoint_deterministic():
    d = labelled([7, 13, 50, 3, 0, 30])
    s = data.split(d, validation=0.2, test=0.3, seed=1, name="toy", num_classes=6)
    assert s.num_classes == 6 and s.name == "toy"
    check_split(d, s, 0.2, 0.3)
    again = data.split(d, validation=0.2, test=0.3, seed=1, name="toy", num_classes=6)
    for a, b in zip(s[:3], again[:3], strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other = data.split(d, validation=0.2, test=0.3, seed=2)
    assert not np.array_equal(other.validation.x, s.validation.x)
    assert other.num_classes == 6  # inferred: y.max() + 1 (class 4 is empty, class 5 is not)


def test_split_exact_fractions_give_exact_counts():
    # 0.2 of 5 is 1, not 1 ± one rounding: the fractions are read as the decimals they print as.
    s = data.split(labelled([5, 10, 15]), validation=0.2, test=0.4)
    np.testing.assert_array_equal(np.bincount(s.validation.y), [1, 2, 3])
    np.testing.assert_array_equal(np.bincount(s.test.y), [2, 4, 6])
    np.testing.assert_array_equal(np.bincount(s.train.y), [2, 4, 6])


@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    validation=st.sampled_from([0.1, 0.15, 0.2, 0.25, 1 / 3]),
    test=st.sampled_from([0.1, 0.2, 0.3, 0.45]),
    seed=st.integers(0, 3),
)
def test_split_property(counts, validation, test, seed):
    d = labelled(counts, seed)
    try:
        s = data.split(d, validation=validation, test=test, seed=seed)
    except ValueError as e:
        # Only where some part's exact share is under one example (each part gets its share
        # of n rounded up or down).
        assert min(validation, test, 1 - validation - test) * len(d.y) < 1
        assert re.search("data is empty|part of 'data' would be empty", str(e))
        return
    assert s.num_classes == len(counts) - next(i for i, c in enumerate(counts[::-1]) if c)
    check_split(d, s, validation, test)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"validation": 0.0}, ValueError, r"validation is the fraction .* \(0, 1\), got 0.0"),
        ({"test": 1.5}, ValueError, r"test is the fraction .* \(0, 1\), got 1.5"),
        ({"validation": 0.5, "test": 0.5}, ValueError, "validation \\+ test must be < 1"),
        ({"num_classes": 2}, ValueError, r"labels must lie in \[0, 2\) .* got 2 at index"),
        ({"seed": 1.0}, TypeError, "seed must be an int"),
    ],
)
def test_split_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"split: {match}"):
        data.split(labelled([4, 4, 4]), **kwargs)


def test_split_bad_data():
    with pytest.raises(ValueError, match=r"the test part of 'tiny' would be empty \(test=0.1"):
        data.split(labelled([3, 3]), validation=0.4, test=0.1, name="tiny")
    with pytest.raises(ValueError, match=r"expected x of shape \[n, features\] and y of shape"):
        data.split(Dataset(np.zeros((4, 2, 2), np.float32), np.zeros(4, np.int32)))
    with pytest.raises(TypeError, match="y must hold integer class indices, got dtype float32"):
        data.split(Dataset(np.zeros((4, 2), np.float32), np.zeros(4, np.float32)))
    with pytest.raises(ValueError, match="data is empty"):
        data.split(Dataset(np.zeros((0, 2), np.float32), np.zeros(0, np.int32)))
    with pytest.raises(TypeError, match=r"expected a jaxnn.data.Dataset\(x, y\), got tuple"):
        data.split((np.zeros((4, 2)), np.zeros(4, int)))


# --------------------------------------------------------------------------------------------
# standardize


def reference_standardize(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The float64 textbook computation, constant features given std 1."""
    train = train.astype(np.float64)
    std = train.std(0)
    return (x.astype(np.float64) - train.mean(0)) / np.where(std > 0, std, 1.0)


def check_standardized(raw: Splits, s: Splits) -> None:
    z = s.train.x.astype(np.float64)
    n = len(z)
    varying = raw.train.x.min(0) < raw.train.x.max(0)
    # Each z is rounded once to float32 (relative error <= eps32/2); averaged, and with
    # mean |z| <= rms z = 1, the mean moves by <= eps32/2 and the std by <= eps32/2 (+ O(eps²)).
    # The float64 statistics add n eps64 max|z|, with max|z| <= sqrt(n - 1) (Samuelson).
    tol = EPS32 / 2 + n**1.5 * EPS64
    assert np.abs(z.mean(0)).max() <= tol
    assert np.abs(z[:, varying].std(0) - 1).max() <= tol
    np.testing.assert_array_equal(s.train.x[:, ~varying], 0.0)
    for raw_part, part in zip(raw[:3], s[:3], strict=True):
        assert part.x.dtype == np.float32
        np.testing.assert_array_equal(part.y, raw_part.y)
        expected = reference_standardize(raw.train.x, raw_part.x)
        np.testing.assert_allclose(part.x, expected, rtol=EPS32, atol=EPS32)


def test_standardize_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 5.0, (100, 4)) * [1, 10, 0.01, 1]).astype(np.float32)
    x[:, 3] = 0.1  # constant: a float32 value whose float64 sum over 60 rows is not exact
    raw = data.split(Dataset(x, np.arange(100, dtype=np.int32) % 2), seed=0)
    # Validation and test data the training set never saw: shifted, and not constant.
    shift = np.float32([15, 150, 0.15, 0])  # three standard deviations
    raw = raw._replace(validation=raw.validation._replace(x=raw.validation.x + shift))
    raw.test.x[:, 3] = np.linspace(-1, 1, len(raw.test.x))
    s = data.standardize(raw)
    check_standardized(raw, s)
    # The constant feature is only centred: 0 in training, x - 0.1 elsewhere.
    np.testing.assert_allclose(s.test.x[:, 3], raw.test.x[:, 3] - np.float32(0.1), rtol=EPS32)
    # The shifted validation part is far from mean 0: its own statistics were not used.
    assert (s.validation.x[:, :3].mean(0) > 2).all()


def test_standardize_errors():
    s = data.split(labelled([5, 5]), seed=0)
    bad = s._replace(train=s.train._replace(x=np.where(s.train.x == 0, np.nan, s.train.x)))
    with pytest.raises(ValueError, match="training feature 0 holds a non-finite value"):
        data.standardize(bad)
    narrow = s._replace(test=s.test._replace(x=s.test.x[:, :1]))
    with pytest.raises(ValueError, match=r"widths \[2, 2, 1\]"):
        data.standardize(narrow)
    with pytest.raises(TypeError, match=re.escape("expected jaxnn.data.Splits, got Dataset")):
        data.standardize(s.train)


# --------------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def raw_digits() -> Dataset:
    sklearn = pytest.importorskip("sklearn.datasets")
    raw = sklearn.load_digits()
    return Dataset((raw.data / 16).astype(np.float32), raw.target.astype(np.int32))


def test_digits(raw_digits):
    s = data.digits(seed=0)
    assert s.name == "digits" and s.num_classes == 10
    assert [len(p.y) for p in s[:3]] == [1079, 359, 359]
    assert all(p.x.shape[1:] == (64,) for p in s[:3])
    assert sorted(np.unique(s.train.y)) == list(range(10))
    counts = np.bincount(raw_digits.y)
    for share, p in zip((0.6, 0.2, 0.2), s[:3], strict=True):
        assert (np.abs(np.bincount(p.y, minlength=10) - share * counts) < 1).all()
    # Recomputed from load_digits: the split of the raw pixels, standardised with the
    # statistics of its training part (and not those of the whole set, which differ).
    raw = data.split(raw_digits, validation=0.2, test=0.2, seed=0, name="digits")
    check_standardized(raw, s)
    assert not np.allclose(raw.train.x.mean(0), raw_digits.x.mean(0))
    again, other = data.digits(seed=0), data.digits(seed=1)
    np.testing.assert_array_equal(again.validation.x, s.validation.x)
    assert not np.array_equal(other.validation.y, s.validation.y)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=re.escape("pip install scikit-learn (or jaxnn[exp")):
        data.digits()


# --------------------------------------------------------------------------------------------
# IDX files

IDX_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array: np.ndarray, code: int | None = None) -> bytes:
    """An IDX file's bytes, as LeCun's format lays them out."""
    code = IDX_CODES[array.dtype.type] if code is None else code
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, content: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def example(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)
        a.flat[:2] = info.min, info.max
        return a
    return rng.normal(0, 1e3, shape).astype(dtype)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_idx_roundtrip(tmp_path, dtype, gz):
    a = example(dtype, (3, 4, 5))
    got = data.load_idx(write(tmp_path / ("f.gz" if gz else "f"), idx_bytes(a), gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("shape", [(7,), (0, 28, 28), ()])
def test_idx_shapes(tmp_path, shape):
    a = example(np.uint8, shape)
    np.testing.assert_array_equal(data.load_idx(write(tmp_path / "f", idx_bytes(a))), a)


def test_idx_gz_name_already_decompressed(tmp_path):
    # A browser that decompresses a download keeps the .gz name: read by content, not name.
    a = example(np.uint8, (2, 3))
    path = write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(a))
    np.testing.assert_array_equal(data.load_idx(path), a)


def idx_error(path: Path, match: str, error: type = DataFormatError) -> None:
    with pytest.raises(error, match=re.escape(str(path)) + ".*" + match):
        data.load_idx(path)


def test_idx_errors(tmp_path):
    a = example(np.uint8, (4, 5))
    good = idx_bytes(a)
    idx_error(tmp_path / "nothing-here", "no such file. Expected an IDX file", FileNotFoundError)
    idx_error(
        write(tmp_path / "page", b"<html><body>Not Found</body></html>"),
        "not an IDX file: its first 4 bytes are 3c 68 74 6d, expected an IDX magic number 00 00",
    )
    idx_error(
        write(tmp_path / "code", good[:2] + b"\x0a" + good[3:]),
        "unknown IDX type code 0x0A in the magic number 00 00 0a 02; known codes: 0x08 uint8",
    )
    idx_error(write(tmp_path / "short", good[:3]), "truncated: 3 bytes, fewer than the 4")
    idx_error(
        write(tmp_path / "header", good[:9]),
        "truncated header: 2 dimensions need 12 bytes, found 9",
    )
    idx_error(
        write(tmp_path / "cut", good[:-3]),
        re.escape(
            "truncated: expected 20 bytes of data for shape (4, 5) of 1-byte uint8, found 17"
        ),
    )
    idx_error(
        write(tmp_path / "cut.gz", good[:-3], gz=True), "truncated: expected 20 bytes .* found 17"
    )
    idx_error(
        write(tmp_path / "long", good + b"\0\0"),
        "2 trailing bytes: expected 20 bytes of data for shape",
    )
    i16 = idx_bytes(example(np.int16, (4, 5)))
    idx_error(write(tmp_path / "odd", i16[:-1]), "expected 40 bytes .* of 2-byte int16, found 39")
    # Corrupt gzip: cut short (EOFError), and a damaged stream (zlib.error or a CRC failure).
    packed = gzip.compress(example(np.uint8, (50, 50)).tobytes())
    idx_error(write(tmp_path / "gz-cut", packed[:-50]), r"corrupt gzip data \(EOFError")
    damaged = bytearray(packed)
    damaged[20:40] = bytes(20)
    idx_error(write(tmp_path / "gz-bad", bytes(damaged)), "corrupt gzip data .* download the file")


# --------------------------------------------------------------------------------------------
# MNIST from files


def fake_mnist(n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny MNIST: random 28x28 uint8 images, all ten classes; pixel (0, 0) is the index."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        images[:, 27, 27] = 0  # a blank corner: constant in training
        arrays[f"x_{part}"] = images
        arrays[f"y_{part}"] = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return arrays


def write_mnist(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    folder.mkdir(exist_ok=True)
    keys = ("x_train", "y_train", "x_test", "y_test")
    for key, name in zip(keys, data.sources._MNIST_FILES, strict=True):
        # gz: mixed, as a half-unpacked download would be.
        compress = gz and key.startswith("x")
        write(folder / (name + (".gz" if compress else "")), idx_bytes(arrays[key]), compress)
    return folder


def test_mnist_from_idx_files(tmp_path):
    arrays = fake_mnist()
    s = data.mnist(write_mnist(tmp_path, arrays), validation=20, seed=0)
    assert s.name == "mnist" and s.num_classes == 10
    assert [p.x.shape for p in s[:3]] == [(40, 784), (20, 784), (20, 784)]
    assert all(p.x.dtype == np.float32 and p.y.dtype == np.int32 for p in s[:3])
    np.testing.assert_array_equal(np.bincount(s.validation.y, minlength=10), 2)
    np.testing.assert_array_equal(np.bincount(s.train.y, minlength=10), 4)
    # Pixel (0, 0) is an increasing function of the index: its rank gives each example's row.
    first = np.concatenate([s.train.x[:, 0], s.validation.x[:, 0]])
    rows = np.argsort(np.argsort(first))
    train_rows, val_rows = rows[:40], rows[40:]
    assert (np.diff(train_rows) > 0).all() and (np.diff(val_rows) > 0).all()
    pixels = arrays["x_train"].reshape(60, -1).astype(np.float32) / np.float32(255)
    raw = Splits(
        Dataset(pixels[train_rows], arrays["y_train"][train_rows].astype(np.int32)),
        Dataset(pixels[val_rows], arrays["y_train"][val_rows].astype(np.int32)),
        Dataset(
            arrays["x_test"].reshape(20, -1).astype(np.float32) / np.float32(255),
            arrays["y_test"].astype(np.int32),
        ),
        10,
        "mnist",
    )
    check_standardized(raw, s)
    # Deterministic; another seed holds out other examples.
    again = data.mnist(tmp_path, validation=20, seed=0)
    np.testing.assert_array_equal(again.validation.x, s.validation.x)
    other = data.mnist(tmp_path, validation=20, seed=1)
    assert not np.array_equal(other.validation.x[:, 0], s.validation.x[:, 0])


def test_mnist_from_npz_matches_idx(tmp_path):
    arrays = fake_mnist()
    from_idx = data.mnist(write_mnist(tmp_path / "idx", arrays, gz=False), validation=20)
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "fashion_mnist.npz", **arrays)
    from_npz = data.mnist(tmp_path / "npz", kind="fashion_mnist", validation=20)
    assert from_npz.name == "fashion_mnist"
    for a, b in zip(from_idx[:3], from_npz[:3], strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


def mnist_error(folder: Path, match: str, error: type = DataFormatError, **kwargs) -> None:
    with pytest.raises(error, match=match):
        data.mnist(folder, validation=kwargs.pop("validation", 20), **kwargs)


def test_mnist_missing_files(tmp_path):
    mnist_error(
        tmp_path / "absent",
        "data_dir .*absent' is not a folder. It must hold the four IDX files "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte",
        FileNotFoundError,
    )
    folder = write_mnist(tmp_path / "m", fake_mnist())
    (folder / "t10k-labels-idx1-ubyte").unlink()
    mnist_error(
        folder,
        r"holds neither mnist.npz nor all four IDX files \(missing: t10k-labels-idx1-ubyte\)"
        r".*or mnist.npz with the arrays x_train, y_train, x_test, y_test",
        FileNotFoundError,
    )


def test_mnist_bad_files(tmp_path):
    def folder_with(name: str, **changes: np.ndarray) -> Path:
        return write_mnist(tmp_path / name, {**fake_mnist(), **changes}, gz=False)

    images = re.escape(str(tmp_path / "count" / "train-images-idx3-ubyte"))
    labels = re.escape(str(tmp_path / "count" / "train-labels-idx1-ubyte"))
    mnist_error(
        folder_with("count", y_train=np.zeros(59, np.uint8)),
        f"{images} holds 60 images but {labels} holds 59 labels",
    )
    bad_label = np.arange(60, dtype=np.uint8) % 10
    bad_label[7] = 10
    mnist_error(
        folder_with("range", y_train=bad_label),
        re.escape(str(tmp_path / "range" / "train-labels-idx1-ubyte"))
        + ": labels must lie in 0..9, found 10 at index 7",
    )
    mnist_error(
        folder_with("dtype", x_test=np.zeros((20, 28, 28), np.int32)),
        "t10k-images-idx3-ubyte: expected images as uint8 \\[n, 28, 28\\], got int32",
    )
    mnist_error(
        folder_with("size", x_test=np.zeros((20, 14, 14), np.uint8)),
        r"t10k-images-idx3-ubyte: holds 14x14 images; MNIST's and Fashion-MNIST's are 28x28",
    )
    magic = write_mnist(tmp_path / "magic", fake_mnist(), gz=False)
    write(magic / "train-labels-idx1-ubyte", b"PK\x03\x04 not idx")
    mnist_error(magic, "train-labels-idx1-ubyte: not an IDX file: its first 4 bytes are 50 4b")
    good = folder_with("good")
    mnist_error(good, "validation=60 must be less than the 60 examples", ValueError, validation=60)
    mnist_error(good, "validation must be >= 1", ValueError, validation=0)
    mnist_error(
        good, "unknown kind 'emnist'. Known kinds: mnist, fashion_mnist", ValueError, kind="emnist"
    )


def test_npz_errors(tmp_path):
    arrays = fake_mnist()
    path = tmp_path / "mnist.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if k != "y_test"})
    with pytest.raises(DataFormatError, match=r"mnist.npz: missing key\(s\) y_test: the archive"):
        data.mnist(tmp_path, validation=20)
    write(path, b"this is not a zip file")
    with pytest.raises(DataFormatError, match=r"mnist.npz: not a readable .npz archive"):
        data.mnist(tmp_path, validation=20)
    np.savez(path, **arrays)
    write(path, path.read_bytes()[:100])  # a zip cut short
    with pytest.raises(DataFormatError, match=r"mnist.npz: not a readable .npz archive"):
        data.load_npz(path)
    np.save(tmp_path / "single.npy", arrays["x_test"])
    with pytest.raises(DataFormatError, match=r"single.npy: holds a single array \(.npy format"):
        data.load_npz(tmp_path / "single.npy")
    np.savez(path, **{**arrays, "x_train": arrays["x_train"][:, :, 0]})
    with pytest.raises(DataFormatError, match=r"mnist.npz\['x_train'\]: expected images as uint8"):
        data.mnist(tmp_path, validation=20)
    with pytest.raises(
        FileNotFoundError, match=re.escape("none.npz: no such file. Expected an .npz")
    ):
        data.load_npz(tmp_path / "none.npz")


# --------------------------------------------------------------------------------------------
# load


@pytest.mark.parametrize("name", [n for n in data.DATASETS if n not in ("mnist", "fashion_mnist")])
def test_load(name):
    s = data.load(name, seed=0)
    assert isinstance(s, Splits) and s.name == name
    assert all(len(p.y) > 0 and p.x.dtype == np.float32 for p in s[:3])
    if name in data.SYNTHETIC:
        assert s.num_classes == 2 and [len(p.y) for p in s[:3]] == [240, 80, 80]


def test_load_names():
    assert set(data.DATASETS) == {*data.SYNTHETIC, "digits", "mnist", "fashion_mnist"}
    known = "xor, moons, circles, spirals, digits, mnist, fashion_mnist."
    with pytest.raises(
        ValueError, match=re.escape(f"unknown data set 'cifar10'. Known data sets: {known}")
    ):
        data.load("cifar10")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_load_mnist_needs_data_dir(tmp_path, name):
    with pytest.raises(ValueError, match=rf"{name}' .* pass data_dir \(--data-dir .*train-images"):
        data.load(name)
    # With a folder, load reaches mnist(); the fake set is smaller than the default hold-out.
    write_mnist(tmp_path, fake_mnist())
    with pytest.raises(ValueError, match="validation=10000 must be less than the 60 examples"):
        data.load(name, data_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------
# Bad files, table-driven: (id, thunk(tmp_path), exception type, fragment of the message)


def _mnist_with(tmp_path: Path, npz: bool = False, **changes: np.ndarray) -> Splits:
    """``mnist`` on the fake set with ``changes``, as the four IDX files or as mnist.npz."""
    arrays = {**fake_mnist(), **changes}
    folder = tmp_path / "m"
    if npz:
        folder.mkdir()
        np.savez(folder / "mnist.npz", **arrays)
    else:
        write_mnist(folder, arrays, gz=False)
    return data.mnist(folder, validation=20)


def _idx_file(tmp_path: Path, name: str, content: bytes, gz: bool = False) -> np.ndarray:
    return data.load_idx(write(tmp_path / name, content, gz))


def _swapped(tmp_path: Path) -> Splits:
    folder = write_mnist(tmp_path / "m", fake_mnist(), gz=False)
    labels = (folder / "train-labels-idx1-ubyte").read_bytes()
    write(folder / "train-images-idx3-ubyte", labels)
    return data.mnist(folder, validation=20)


_THREES = np.full(60, 3, np.uint8)
_LABEL_255 = np.arange(20, dtype=np.uint8) % 10
_LABEL_255[4] = 255
BAD_EDGE_ROWS = [
    # A labels file of one class: not MNIST's (IDX and .npz).
    (
        "mnist-one-class-labels",
        lambda tmp_path: _mnist_with(tmp_path, y_train=_THREES),
        DataFormatError,
        "train-labels-idx1-ubyte: its 60 labels hold 1 of the 10 classes, [3] (missing: [0, 1, 2, "
        "4, 5, 6, 7, 8, 9]); MNIST and Fashion-MNIST have 10 classes",
    ),
    (
        "mnist-npz-one-class-labels",
        lambda tmp_path: _mnist_with(tmp_path, npz=True, y_train=_THREES),
        DataFormatError,
        "mnist.npz['y_train']: its 60 labels hold 1 of the 10 classes, [3]",
    ),
    (
        "mnist-npz-nine-classes",
        lambda tmp_path: _mnist_with(tmp_path, npz=True, y_test=np.arange(20, dtype=np.uint8) % 9),
        DataFormatError,
        "mnist.npz['y_test']: its 20 labels hold 9 of the 10 classes",
    ),
    # Labels outside [0, 10): the file and the first bad value.
    (
        "mnist-npz-label-255",
        lambda tmp_path: _mnist_with(tmp_path, npz=True, y_test=_LABEL_255),
        DataFormatError,
        "mnist.npz['y_test']: labels must lie in 0..9, found 255 at index 4",
    ),
    # A part of 0 images.
    (
        "mnist-zero-test-images",
        lambda tmp_path: _mnist_with(
            tmp_path, x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8)
        ),
        DataFormatError,
        "t10k-images-idx3-ubyte: holds 0 images (shape (0, 28, 28))",
    ),
    (
        "mnist-npz-zero-train-images",
        lambda tmp_path: _mnist_with(
            tmp_path,
            npz=True,
            x_train=np.zeros((0, 28, 28), np.uint8),
            y_train=np.zeros(0, np.uint8),
        ),
        DataFormatError,
        "mnist.npz['x_train']: holds 0 images",
    ),
    (
        "mnist-zero-labels",
        lambda tmp_path: _mnist_with(tmp_path, y_test=np.zeros(0, np.uint8)),
        DataFormatError,
        "t10k-labels-idx1-ubyte: holds 0 labels",
    ),
    (
        "mnist-count-mismatch",
        lambda tmp_path: _mnist_with(tmp_path, y_test=np.arange(19, dtype=np.uint8) % 10),
        DataFormatError,
        "holds 20 images but",
    ),
    # Not 28x28, not uint8, files swapped.
    (
        "mnist-14x14-images",
        lambda tmp_path: _mnist_with(
            tmp_path,
            x_train=np.zeros((60, 14, 14), np.uint8),
            x_test=np.zeros((20, 14, 14), np.uint8),
        ),
        DataFormatError,
        "train-images-idx3-ubyte: holds 14x14 images; MNIST's and Fashion-MNIST's are 28x28",
    ),
    (
        "mnist-idx-int16-labels",
        lambda tmp_path: _mnist_with(tmp_path, y_train=np.arange(60, dtype=np.int16) % 10),
        DataFormatError,
        "train-labels-idx1-ubyte: expected labels as uint8 [n], got int16 of shape (60,). "
        "Download the original files again.",
    ),
    (
        "mnist-npz-int64-labels",
        lambda tmp_path: _mnist_with(tmp_path, npz=True, y_test=np.arange(20) % 10),
        DataFormatError,
        "e.g. with y.astype(np.uint8)",
    ),
    (
        "mnist-labels-under-an-images-name",
        _swapped,
        DataFormatError,
        "got uint8 of shape (60,) (a labels file under an images file's name?)",
    ),
    # Empty, and not IDX though named so.
    (
        "idx-empty-file",
        lambda tmp_path: _idx_file(tmp_path, "t10k-labels-idx1-ubyte", b""),
        DataFormatError,
        "t10k-labels-idx1-ubyte: the file is empty (0 bytes): the download failed",
    ),
    (
        "idx-empty-gzip",
        lambda tmp_path: _idx_file(tmp_path, "t10k-labels-idx1-ubyte.gz", b"", gz=True),
        DataFormatError,
        "the file is empty (0 bytes once decompressed)",
    ),
    (
        "idx-zip-named-gz",
        lambda tmp_path: _idx_file(tmp_path, "train-images-idx3-ubyte.gz", b"PK\x03\x04rest"),
        DataFormatError,
        "train-images-idx3-ubyte.gz: not an IDX file (its name ends in .gz, but it is not gzip "
        "data): its first 4 bytes are 50 4b 03 04",
    ),
    (
        "idx-bzip2",
        lambda tmp_path: _idx_file(tmp_path, "f.gz", b"BZh91AY&SY"),
        DataFormatError,
        "It is bzip2-compressed: decompress it (bunzip2) first.",
    ),
    (
        "idx-git-lfs-pointer",
        lambda tmp_path: _idx_file(
            tmp_path, "f", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n"
        ),
        DataFormatError,
        "It is a Git LFS pointer, not the data: run git lfs pull.",
    ),
]


def test_mnist_test_file_of_ten_examples_with_every_class_loads(tmp_path):
    # The class check asks for every class, not for a size: a small file of all ten is read.
    arrays = fake_mnist(n_test=10)
    s = data.mnist(write_mnist(tmp_path, arrays), validation=20)
    np.testing.assert_array_equal(np.sort(s.test.y), np.arange(10))


def test_standardize_per_all_takes_one_mean_and_spread_for_every_value():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (50, 6)).astype(np.float32) * np.float32([1, 2, 3, 4, 5, 6])
    raw = data.split(Dataset(x, np.arange(50, dtype=np.int32) % 2), seed=0)
    s = data.standardize(raw, per="all")
    train = raw.train.x.astype(np.float64)
    mean, std = train.mean(), train.std()
    for part, out in zip(raw[:3], s[:3], strict=True):
        np.testing.assert_allclose(out.x, (part.x - mean) / std, rtol=1e-6, atol=1e-6)
    # the pixels keep their relative contrast: one affine map for every feature
    assert abs(float(s.train.x.mean())) < 1e-6 and abs(float(s.train.x.std()) - 1) < 1e-5
    assert not np.allclose(s.train.x.std(0), 1)
    with pytest.raises(ValueError, match="per must be 'feature' or 'all'"):
        data.standardize(raw, per="pixel")
    digits = data.digits(per="all")
    assert digits.train.x.shape[1] == 64 and abs(float(digits.train.x.mean())) < 1e-5
