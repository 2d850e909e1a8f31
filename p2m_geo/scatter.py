"""Scatter reductions (sum / mean over rows) with a selectable backend.

Backends, all giving the same results within float tolerance (``benchmarks/bm_losses.py``
compares them and ``tests/test_losses.py`` checks them):

- ``index_add`` (default): ``Tensor.index_add_`` with a 1-D index and a ``bincount``
  for means. Its backward is a plain ``index_select``. Measured about 2x faster than
  ``pyg`` for the Laplacian forward+backward on CPU (see ``benchmarks/RESULTS.md``),
  so it is the default.
- ``pyg``: ``torch_geometric.utils.scatter`` (broadcast index + ``scatter_add_`` /
  ``scatter_reduce_``).
- ``torch_scatter``: the optional compiled extension (``pip install '.[scatter]'``).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter as pyg_scatter

__all__ = ["scatter", "set_scatter_backend", "get_scatter_backend", "torch_scatter_available"]

BACKENDS = ("index_add", "pyg", "torch_scatter")
_BACKEND = "index_add"


def torch_scatter_available() -> bool:
    try:
        import torch_scatter  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def set_scatter_backend(name: str) -> None:
    """Select ``'index_add'`` (default), ``'pyg'`` or ``'torch_scatter'`` (needs the ``[scatter]`` extra)."""
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"scatter backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "torch_scatter" and not torch_scatter_available():
        raise ValueError("scatter backend: 'torch_scatter' requested but it is not installed (pip install '.[scatter]')")
    _BACKEND = name


def get_scatter_backend() -> str:
    return _BACKEND


def scatter(src: Tensor, index: Tensor, dim_size: int, reduce: str = "sum") -> Tensor:
    """Reduce rows of ``src`` into ``dim_size`` slots by ``index`` (``sum`` or ``mean``).

    Empty slots give 0 for both reductions.
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce: expected 'sum' or 'mean', got {reduce!r}")
    if _BACKEND == "index_add":
        out = src.new_zeros((dim_size,) + tuple(src.shape[1:])).index_add_(0, index, src)
        if reduce == "mean":
            count = torch.bincount(index, minlength=dim_size).clamp_min_(1).to(src.dtype)
            out = out / count.view((-1,) + (1,) * (src.dim() - 1))
        return out
    if _BACKEND == "torch_scatter":
        import torch_scatter

        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce=reduce)
    return pyg_scatter(src, index, dim=0, dim_size=dim_size, reduce=reduce)
