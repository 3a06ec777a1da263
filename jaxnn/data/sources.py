"""The data sets by source: scikit-learn's digits, MNIST and Fashion-MNIST from local files,
and every set by name (:func:`load`, for the command line)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from jaxnn.data._arguments import _int, _seed
from jaxnn.data.files import _NPZ_KEYS, DataFormatError, load_idx, load_npz
from jaxnn.data.splits import Splits, _stratified, split, standardize
from jaxnn.data.synthetic import SYNTHETIC, Dataset

__all__ = ["DATASETS", "digits", "load", "mnist"]


def digits(*, seed: int = 0, per: str = "feature") -> Splits:
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
        per: :func:`standardize`'s ``per``: ``"feature"`` (default; every pixel on its own) or
            ``"all"`` (one mean and spread for every pixel: what a convolution wants).

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
        split(data, validation=0.2, test=0.2, seed=seed, name="digits", num_classes=10), per=per
    )


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST from local files

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
    data_dir: str | os.PathLike,
    *,
    kind: str = "mnist",
    validation: int = 10000,
    seed: int = 0,
    per: str = "feature",
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
        per: :func:`standardize`'s ``per``: ``"feature"`` (default) or ``"all"``.

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
        ),
        per=per,
    )


# --------------------------------------------------------------------------------------------
# By name

DATASETS: tuple[str, ...] = (*SYNTHETIC, "digits", *_MNIST_KINDS)
"""The names :func:`load` accepts."""


def load(
    name: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0, per: str = "feature"
) -> Splits:
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
        per: how the image sets are standardised (:func:`standardize`): ``"feature"`` or
            ``"all"``; the synthetic sets are not.

    Raises:
        ValueError: an unknown name, or MNIST without ``data_dir``.
    """
    if name in SYNTHETIC:
        data = SYNTHETIC[name](seed=seed)
        return split(data, validation=0.2, test=0.2, seed=seed, name=name, num_classes=2)
    if name == "digits":
        return digits(seed=seed, per=per)
    if name in _MNIST_KINDS:
        if data_dir is None:
            raise ValueError(
                f"data set {name!r} is read from local files and needs a folder: pass "
                f"data_dir (--data-dir on the command line) holding {_mnist_expected(name)}."
            )
        return mnist(data_dir, kind=name, seed=seed, per=per)
    raise ValueError(f"unknown data set {name!r}. Known data sets: {', '.join(DATASETS)}.")
