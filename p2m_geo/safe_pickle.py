"""A pickle reader that admits numpy arrays and plain containers, and nothing else.

The Pixel2Mesh data files (``info_ellipsoid.dat``, ShapeNetP2M ``*.dat``) are Python
pickles. ``pickle.load`` on such a file runs whatever callable the file names, so a
file from an untrusted source can execute code. :func:`restricted_loads` resolves
only the handful of globals a numpy array needs; any other global (``os.system``,
``builtins.eval``, ...) raises :class:`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "restricted_loads", "restricted_load"]


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle names a global that is not on the allow-list."""


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


# (module, name) -> factory of the object it resolves to. Python-2 pickles and numpy 1.x
# write ``numpy.core.multiarray``; numpy 2 writes ``numpy._core.multiarray``.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    # protocol 5 out-of-band-capable arrays: _frombuffer(bytes, dtype, shape, order)
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") at protocols < 3; it only encodes text.
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise UnsafePickleError(
                f"refusing to load global '{module}.{name}': only numpy arrays and plain containers are allowed"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing persistent ids in pickle")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` admitting only numpy arrays, numbers, strings and containers.

    Args:
        data: the pickle bytes (protocol 0-5; Python-2 strings decoded as latin-1).

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list.
        pickle.UnpicklingError, EOFError, ValueError: the bytes are not a valid pickle.
    """
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def restricted_load(path: str | os.PathLike) -> Any:
    """:func:`restricted_loads` on the contents of the file at ``path``."""
    with open(path, "rb") as handle:
        return restricted_loads(handle.read())
