"""Reader of ShapeNetP2M ``.dat`` files (pickled float32 ``[N,6]``: xyz + normals)."""

from __future__ import annotations

import os
import pickle

import numpy as np

from p2m_geo.io_utils import atomic_write_bytes
from p2m_geo.safe_pickle import UnsafePickleError, restricted_loads

__all__ = ["DatFileError", "load_dat", "save_dat", "MAX_DAT_BYTES"]

#: Largest .dat accepted (real files are ~0.3 MB); bounds memory on hostile input.
MAX_DAT_BYTES = 256 * 1024 * 1024


class DatFileError(ValueError):
    """A ``.dat`` file that is missing, unsafe or not an ``[N,6]`` point array."""


def load_dat(path: str | os.PathLike) -> np.ndarray:
    """Load a ShapeNetP2M ``.dat`` as float32 ``[N,6]`` without executing pickle code.

    Accepts Python-2 and Python-3 pickles of a numpy array (``encoding='latin1'``).

    Raises:
        DatFileError: naming the file, when it is missing, empty, truncated, refers to
            anything but numpy arrays, or is not a finite ``[N,6]`` numeric array with N >= 1.
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_DAT_BYTES:
            raise DatFileError(f"{path}: expected a .dat of at most {MAX_DAT_BYTES} bytes, got {size}")
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DatFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data:
        raise DatFileError(f"{path}: expected a pickled [N,6] array, got an empty file")
    try:
        array = restricted_loads(data)
    except UnsafePickleError as error:
        raise DatFileError(f"{path}: unsafe pickle, {error}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        UnicodeDecodeError,
        OverflowError,
    ) as error:
        raise DatFileError(
            f"{path}: expected a pickled [N,6] array, got a corrupt pickle ({type(error).__name__})"
        ) from None
    if not isinstance(array, np.ndarray):
        raise DatFileError(f"{path}: expected a pickled [N,6] array, got {type(array).__name__}")
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] != 6 or array.shape[0] < 1:
        raise DatFileError(f"{path}: expected a numeric [N,6] array, got {array.dtype} {list(array.shape)}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise DatFileError(f"{path}: expected finite values, got NaN or Inf")
    return array


def save_dat(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a float32 ``[N,6]`` array as a ShapeNetP2M ``.dat`` (pickle protocol 2, atomic).

    Protocol 2 keeps the files readable by the original Python-2 Pixel2Mesh code.
    """
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 6:
        raise ValueError(f"array: expected [N,6], got {list(array.shape)}")
    atomic_write_bytes(path, pickle.dumps(array, protocol=2))
