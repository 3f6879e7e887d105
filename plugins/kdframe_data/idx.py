"""Reading IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a header followed by raw big-endian data::

    magic   4 bytes: 0x00 0x00 <type code> <number of dimensions>
    dims    one big-endian uint32 per dimension
    data    prod(dims) items of the type, big-endian, row-major

The type codes are 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32 and 0x0E float64.
Files may be gzip-compressed (recognised by their content, whatever their name). Everything is decoded
with :func:`numpy.frombuffer`, so a 60 000-image file takes milliseconds once decompressed.

Every problem (a missing, corrupt or truncated file) is a :class:`~kdframe.errors.DataError` that
names the file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from kdframe import DataError

#: IDX type code -> numpy dtype (big-endian, as stored).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """The file ``stem`` or ``stem.gz`` in ``folder`` (the uncompressed one first), or ``None``."""
    for name in (stem, stem + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(f"Cannot read IDX file {path}: {error.strerror or error}.") from error
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(
                f"IDX file {path} is a damaged or truncated gzip file ({error}). Delete it and get "
                "the data again."
            ) from error
    return data


def parse_idx(data: bytes, source: str = "<bytes>", *, ndim: int | None = None) -> np.ndarray:
    """Decode the bytes of an IDX file into a native-endian, writable numpy array.

    Args:
        data: The (decompressed) contents of the file.
        source: The file's name, used in error messages.
        ndim: The number of dimensions expected (e.g. 3 for images, 1 for labels), if any.

    Raises:
        DataError: The magic number, dimensions or length are wrong.
    """
    if len(data) < 4:
        raise DataError(f"IDX file {source} is truncated: {len(data)} bytes, not even a header.")
    zero1, zero2, type_code, dims_count = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or type_code not in IDX_TYPES or dims_count == 0:
        raise DataError(
            f"{source} is not an IDX file: its magic number is 0x{data[:4].hex()}, expected "
            "0x0000TTDD (TT a type code: 08, 09, 0b, 0c, 0d or 0e; DD the number of dimensions). "
            "The file may be corrupt or of another format."
        )
    if ndim is not None and dims_count != ndim:
        raise DataError(
            f"IDX file {source} has {dims_count} dimension(s), expected {ndim}. Is it the right file?"
        )
    header = 4 + 4 * dims_count
    if len(data) < header:
        raise DataError(f"IDX file {source} is truncated inside its header ({len(data)} bytes).")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims_count, offset=4))
    dtype = IDX_TYPES[type_code]
    # Python integers: a header's dimensions may multiply past 2**63, where numpy's product wraps.
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise DataError(
            f"IDX file {source} is truncated: its header promises {dims} items ({expected} bytes of "
            f"data) but it holds {actual}. Delete it and get the data again."
        )
    if actual > expected:
        raise DataError(
            f"IDX file {source} has {actual - expected} bytes after the {dims} items its header "
            "describes; the file is corrupt."
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    # One copy: native byte order and writable (torch.from_numpy wants both).
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed.

    Args:
        path: The file.
        ndim: The number of dimensions expected, if any.

    Raises:
        DataError: The file is missing, unreadable, corrupt or truncated; the message names it.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path), ndim=ndim)


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``compress`` or the name ends in ``.gz``).

    Meant for tests and for converting data; the dtype must be one IDX supports.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    dtype = IDX_TYPES[codes[native]]
    payload = (
        bytes([0, 0, codes[native], array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + array.astype(dtype).tobytes()
    )
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path
