"""Data files: IDX (LeCun's MNIST format, optionally gzipped) and ``.npz`` archives."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["DataFormatError", "load_idx", "load_npz"]


class DataFormatError(ValueError):
    """A data file that is not what it should be: wrong magic number, truncated, corrupt."""


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
