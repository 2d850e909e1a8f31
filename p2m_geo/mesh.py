r"""Triangle-mesh topology helpers and the Pixel2Mesh ellipsoid hierarchy.

The hierarchy has three levels (156 / 618 / 2466 vertices). Level 1 is the original
Pixel2Mesh initial ellipsoid; level :math:`\ell+1` appends one vertex at the midpoint of
every edge of level :math:`\ell` (in the order of ``unpool_index[\ell]``) and splits
each triangle :math:`(a, b, c)` into four with the same orientation:

.. math::
    (a, m_{ab}, m_{ca}),\ (m_{ab}, b, m_{bc}),\ (m_{ca}, m_{bc}, c),\ (m_{ab}, m_{bc}, m_{ca}).

Index layout follows PyG: ``pos [V,3]``, ``edge_index [2,2E]`` (both directions),
``face [3,F]``. Faces are ``[F,3]`` in the numpy helpers and ``[3,F]`` on ``Data``.
PyG's ``Data.__inc__`` already offsets any key containing ``index`` and ``face`` by
the graph's vertex count, so batching a level with its ``unpool_index`` needs no
hand-written offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_undirected

__all__ = [
    "EllipsoidHierarchy",
    "ellipsoid_hierarchy",
    "edge_index_from_faces",
    "graph_mesh",
]

ASSET_NAME = "ellipsoid.npz"


def edge_index_from_faces(face: Tensor, num_nodes: int) -> Tensor:
    """Both-direction, duplicate-free, row-sorted ``edge_index [2,2E]`` from ``face [3,F]``."""
    pairs = torch.cat([face[[0, 1]], face[[1, 2]], face[[2, 0]]], dim=1)
    return to_undirected(pairs, num_nodes=num_nodes)  # both directions, coalesced (sorted by row)


@dataclass
class EllipsoidHierarchy:
    """The three ellipsoid levels and the unpooling pairs between them.

    Attributes:
        levels: three :class:`Data` with ``pos [V,3]`` float32, ``edge_index [2,2E]``,
            ``face [3,F]`` long; levels 1 and 2 also carry ``unpool_index [2,E]``: the
            vertex pairs of that level whose midpoints are appended, in order, to form the next.
    """

    levels: List[Data]


def _asset_arrays() -> dict:
    ref = resources.files("p2m_geo.meshes").joinpath(ASSET_NAME)
    with ref.open("rb") as handle:
        with np.load(handle, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}


def ellipsoid_hierarchy() -> EllipsoidHierarchy:
    """Load the packaged ellipsoid hierarchy (``p2m_geo/meshes/ellipsoid.npz``)."""
    arrays = _asset_arrays()
    levels = []
    for level in range(3):
        pos = torch.from_numpy(arrays[f"pos_{level}"]).float()
        face = torch.from_numpy(arrays[f"face_{level}"]).long().t().contiguous()
        data = Data(pos=pos, face=face, edge_index=edge_index_from_faces(face, len(pos)))
        if level < 2:
            index = torch.from_numpy(arrays[f"unpool_{level}"]).long().t().contiguous()
            data.unpool_index = index
        levels.append(data)
    return EllipsoidHierarchy(levels=levels)


def graph_mesh(batch: Batch, index: int) -> Tuple[Tensor, Tensor]:
    """Vertices ``[V,3]`` and local faces ``[F,3]`` of graph ``index`` in a mesh ``Batch``."""
    mask = batch.batch == index
    offset = int(batch.ptr[index]) if getattr(batch, "ptr", None) is not None else int(mask.nonzero()[0])
    faces = batch.face[:, batch.batch[batch.face[0]] == index] - offset
    return batch.pos[mask], faces.t()
