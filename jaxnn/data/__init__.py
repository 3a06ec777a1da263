"""Data sets: four synthetic 2-D problems, scikit-learn's digits, MNIST and Fashion-MNIST.

Host-side NumPy only: nothing here imports JAX, and nothing is downloaded. MNIST and
Fashion-MNIST are read from files the user has put in a folder (:func:`mnist`); digits ships
with scikit-learn (:func:`digits`).

* :mod:`jaxnn.data.synthetic` — :class:`Dataset` and the generators :func:`xor`,
  :func:`moons`, :func:`circles`, :func:`spirals` (by name: :data:`SYNTHETIC`).
* :mod:`jaxnn.data.splits` — :class:`Splits`, :func:`split` (stratified), :func:`standardize`.
* :mod:`jaxnn.data.files` — :func:`load_idx` (IDX, optionally gzipped), :func:`load_npz`,
  :class:`DataFormatError`.
* :mod:`jaxnn.data.sources` — :func:`digits`, :func:`mnist` (MNIST and Fashion-MNIST), and
  :func:`load`, every set by the names in :data:`DATASETS`.

Every name is also here: ``jaxnn.data.digits()``, ``jaxnn.data.Splits``, ...

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

from jaxnn.data import files as files
from jaxnn.data import sources as sources
from jaxnn.data import splits as splits
from jaxnn.data import synthetic as synthetic
from jaxnn.data.files import DataFormatError as DataFormatError
from jaxnn.data.files import load_idx as load_idx
from jaxnn.data.files import load_npz as load_npz
from jaxnn.data.sources import DATASETS as DATASETS
from jaxnn.data.sources import digits as digits
from jaxnn.data.sources import load as load
from jaxnn.data.sources import mnist as mnist
from jaxnn.data.splits import Splits as Splits
from jaxnn.data.splits import split as split
from jaxnn.data.splits import standardize as standardize
from jaxnn.data.synthetic import SYNTHETIC as SYNTHETIC
from jaxnn.data.synthetic import Dataset as Dataset
from jaxnn.data.synthetic import circles as circles
from jaxnn.data.synthetic import moons as moons
from jaxnn.data.synthetic import spirals as spirals
from jaxnn.data.synthetic import xor as xor

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
