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

__all__ = [
    "EllipsoidHierarchy",
    "ellipsoid_hierarchy",
    "undirected_edges",
    "edge_index_from_faces",
    "subdivide",
    "orient_faces_outward",
    "signed_volume",
    "batch_template",
    "graph_mesh",
]

ASSET_NAME = "ellipsoid.npz"
LEVEL_SIZES = (156, 618, 2466)


def undirected_edges(face: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``[E,2]`` (``i < j``, sorted) of triangles ``face [F,3]``."""
    pairs = np.concatenate([face[:, [0, 1]], face[:, [1, 2]], face[:, [2, 0]]])
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def edge_index_from_faces(face: Tensor, num_nodes: int) -> Tensor:
    """Both-direction, duplicate-free, row-sorted ``edge_index [2,2E]`` from ``face [3,F]``."""
    pairs = torch.cat([face[[0, 1]], face[[1, 2]], face[[2, 0]]], dim=1)
    pairs = torch.cat([pairs, pairs.flip(0)], dim=1)
    key = torch.unique(pairs[0] * num_nodes + pairs[1])
    return torch.stack([key // num_nodes, key % num_nodes])


def subdivide(pos: np.ndarray, face: np.ndarray, edges: np.ndarray):
    """Midpoint subdivision that keeps face orientation.

    Args:
        pos: vertex coordinates ``[V,3]``.
        face: triangles ``[F,3]``.
        edges: the undirected edges ``[E,2]`` of ``face``; new vertex ``V + e`` is the
            midpoint of ``edges[e]``.

    Returns:
        ``(pos [V+E,3], face [4F,3])``.
    """
    num_vertices = len(pos)
    lookup = {}
    for e, (i, j) in enumerate(edges):
        lookup[(int(i), int(j))] = lookup[(int(j), int(i))] = num_vertices + e
    if len(lookup) != 2 * len(edges):
        raise ValueError("edges: expected unique undirected edges, got duplicates")
    new_faces = []
    for a, b, c in face.tolist():
        ab, bc, ca = lookup[(a, b)], lookup[(b, c)], lookup[(c, a)]
        new_faces += [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]
    new_pos = np.concatenate([pos, 0.5 * (pos[edges[:, 0]] + pos[edges[:, 1]])])
    return new_pos.astype(pos.dtype), np.asarray(new_faces, dtype=np.int64)


def signed_volume(pos: np.ndarray, face: np.ndarray) -> float:
    r"""Signed volume :math:`\frac16\sum_f \langle p_a, p_b \times p_c\rangle` (> 0 when outward)."""
    a, b, c = (pos[face[:, k]].astype(np.float64) for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def orient_faces_outward(pos: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Re-orient a closed, connected manifold triangle mesh consistently and outward.

    Walks faces breadth-first across shared edges so each neighbour traverses the shared
    edge in the opposite direction, then flips everything if the signed volume is negative.
    """
    face = face.copy()
    edge_faces: dict = {}
    for f, (a, b, c) in enumerate(face.tolist()):
        for i, j in ((a, b), (b, c), (c, a)):
            edge_faces.setdefault((min(i, j), max(i, j)), []).append(f)
    if any(len(fs) != 2 for fs in edge_faces.values()):
        raise ValueError("face: expected a closed manifold mesh (every edge in two faces)")
    visited = np.zeros(len(face), dtype=bool)
    visited[0] = True
    queue = [0]
    while queue:
        f = queue.pop()
        a, b, c = face[f]
        for i, j in ((a, b), (b, c), (c, a)):
            for g in edge_faces[(min(i, j), max(i, j))]:
                if visited[g]:
                    continue
                directed = {(face[g][k], face[g][(k + 1) % 3]) for k in range(3)}
                if (i, j) in directed:  # same direction as f: flip g
                    face[g] = face[g][::-1]
                visited[g] = True
                queue.append(g)
    if not visited.all():
        raise ValueError("face: expected a connected mesh")
    if signed_volume(pos, face) < 0:
        face = face[:, ::-1].copy()
    return face


@dataclass
class EllipsoidHierarchy:
    """The three ellipsoid levels and the unpooling pairs between them.

    Attributes:
        levels: three :class:`Data` with ``pos [V,3]`` float32, ``edge_index [2,2E]``,
            ``face [3,F]`` long; levels 1 and 2 also carry ``unpool_index [2,E]``.
        unpool_index: two long tensors ``[2,E_prev]``: the vertex pairs of level
            :math:`\\ell` whose midpoints are appended, in order, to form level :math:`\\ell+1`.
    """

    levels: List[Data]
    unpool_index: List[Tensor]


def _asset_arrays() -> dict:
    ref = resources.files("p2m_geo.meshes").joinpath(ASSET_NAME)
    with ref.open("rb") as handle:
        with np.load(handle, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}


def ellipsoid_hierarchy() -> EllipsoidHierarchy:
    """Load the packaged ellipsoid hierarchy (``p2m_geo/meshes/ellipsoid.npz``)."""
    arrays = _asset_arrays()
    levels, unpool = [], []
    for level in range(3):
        pos = torch.from_numpy(arrays[f"pos_{level}"]).float()
        face = torch.from_numpy(arrays[f"face_{level}"]).long().t().contiguous()
        data = Data(pos=pos, face=face, edge_index=edge_index_from_faces(face, len(pos)))
        if level < 2:
            index = torch.from_numpy(arrays[f"unpool_{level}"]).long().t().contiguous()
            data.unpool_index = index
            unpool.append(index)
        levels.append(data)
    return EllipsoidHierarchy(levels=levels, unpool_index=unpool)


def graph_mesh(batch: Batch, index: int) -> Tuple[Tensor, Tensor]:
    """Vertices ``[V,3]`` and local faces ``[F,3]`` of graph ``index`` in a mesh ``Batch``."""
    mask = batch.batch == index
    offset = int(batch.ptr[index]) if getattr(batch, "ptr", None) is not None else int(mask.nonzero()[0])
    faces = batch.face[:, batch.batch[batch.face[0]] == index] - offset
    return batch.pos[mask], faces.t()


def batch_template(template: Data, batch_size: int) -> Batch:
    """``batch_size`` copies of one mesh as a PyG :class:`~torch_geometric.data.Batch`."""
    return Batch.from_data_list([template] * batch_size)
